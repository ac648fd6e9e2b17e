from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtocolVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_VERSION_UNSPECIFIED: _ClassVar[ProtocolVersion]
    PROTOCOL_VERSION: _ClassVar[ProtocolVersion]

class PayloadKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYLOAD_KIND_UNSPECIFIED: _ClassVar[PayloadKind]
    PAYLOAD_KIND_BATCH: _ClassVar[PayloadKind]
    PAYLOAD_KIND_MANIFEST: _ClassVar[PayloadKind]
    PAYLOAD_KIND_SNAPSHOT_CHUNK: _ClassVar[PayloadKind]
    PAYLOAD_KIND_SNAPSHOT_FILE: _ClassVar[PayloadKind]
    PAYLOAD_KIND_REPORT_RECEIPT: _ClassVar[PayloadKind]

class DossierStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOSSIER_STATUS_UNSPECIFIED: _ClassVar[DossierStatus]
    DOSSIER_STATUS_RECEIVED: _ClassVar[DossierStatus]
    DOSSIER_STATUS_PROCESSING: _ClassVar[DossierStatus]
    DOSSIER_STATUS_SUPPLEMENT_REQUIRED: _ClassVar[DossierStatus]
    DOSSIER_STATUS_RESULT_READY: _ClassVar[DossierStatus]
    DOSSIER_STATUS_RETURNED: _ClassVar[DossierStatus]
    DOSSIER_STATUS_REJECTED: _ClassVar[DossierStatus]

class BatchOrigin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_ORIGIN_UNSPECIFIED: _ClassVar[BatchOrigin]
    BATCH_ORIGIN_LIVE: _ClassVar[BatchOrigin]
    BATCH_ORIGIN_REPLAY: _ClassVar[BatchOrigin]
PROTOCOL_VERSION_UNSPECIFIED: ProtocolVersion
PROTOCOL_VERSION: ProtocolVersion
PAYLOAD_KIND_UNSPECIFIED: PayloadKind
PAYLOAD_KIND_BATCH: PayloadKind
PAYLOAD_KIND_MANIFEST: PayloadKind
PAYLOAD_KIND_SNAPSHOT_CHUNK: PayloadKind
PAYLOAD_KIND_SNAPSHOT_FILE: PayloadKind
PAYLOAD_KIND_REPORT_RECEIPT: PayloadKind
DOSSIER_STATUS_UNSPECIFIED: DossierStatus
DOSSIER_STATUS_RECEIVED: DossierStatus
DOSSIER_STATUS_PROCESSING: DossierStatus
DOSSIER_STATUS_SUPPLEMENT_REQUIRED: DossierStatus
DOSSIER_STATUS_RESULT_READY: DossierStatus
DOSSIER_STATUS_RETURNED: DossierStatus
DOSSIER_STATUS_REJECTED: DossierStatus
BATCH_ORIGIN_UNSPECIFIED: BatchOrigin
BATCH_ORIGIN_LIVE: BatchOrigin
BATCH_ORIGIN_REPLAY: BatchOrigin

class Envelope(_message.Message):
    __slots__ = ("protocol_version", "district_id", "kind", "body", "signature")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DISTRICT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    district_id: str
    kind: PayloadKind
    body: bytes
    signature: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., district_id: _Optional[str] = ..., kind: _Optional[_Union[PayloadKind, str]] = ..., body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class CitizenUpsert(_message.Message):
    __slots__ = ("citizen_id", "masked_name", "pin_hash", "pin_salt", "count", "embeddings", "dob_hash", "dob_salt", "dob_id4")
    CITIZEN_ID_FIELD_NUMBER: _ClassVar[int]
    MASKED_NAME_FIELD_NUMBER: _ClassVar[int]
    PIN_HASH_FIELD_NUMBER: _ClassVar[int]
    PIN_SALT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DOB_HASH_FIELD_NUMBER: _ClassVar[int]
    DOB_SALT_FIELD_NUMBER: _ClassVar[int]
    DOB_ID4_FIELD_NUMBER: _ClassVar[int]
    citizen_id: str
    masked_name: str
    pin_hash: bytes
    pin_salt: bytes
    count: int
    embeddings: bytes
    dob_hash: bytes
    dob_salt: bytes
    dob_id4: bool
    def __init__(self, citizen_id: _Optional[str] = ..., masked_name: _Optional[str] = ..., pin_hash: _Optional[bytes] = ..., pin_salt: _Optional[bytes] = ..., count: _Optional[int] = ..., embeddings: _Optional[bytes] = ..., dob_hash: _Optional[bytes] = ..., dob_salt: _Optional[bytes] = ..., dob_id4: _Optional[bool] = ...) -> None: ...

class CitizenDelete(_message.Message):
    __slots__ = ("citizen_id",)
    CITIZEN_ID_FIELD_NUMBER: _ClassVar[int]
    citizen_id: str
    def __init__(self, citizen_id: _Optional[str] = ...) -> None: ...

class DossierUpsert(_message.Message):
    __slots__ = ("code", "citizen_id", "procedure", "status", "stage", "received_on", "appointment_on", "counter")
    CODE_FIELD_NUMBER: _ClassVar[int]
    CITIZEN_ID_FIELD_NUMBER: _ClassVar[int]
    PROCEDURE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_ON_FIELD_NUMBER: _ClassVar[int]
    APPOINTMENT_ON_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    code: str
    citizen_id: str
    procedure: str
    status: DossierStatus
    stage: str
    received_on: str
    appointment_on: str
    counter: str
    def __init__(self, code: _Optional[str] = ..., citizen_id: _Optional[str] = ..., procedure: _Optional[str] = ..., status: _Optional[_Union[DossierStatus, str]] = ..., stage: _Optional[str] = ..., received_on: _Optional[str] = ..., appointment_on: _Optional[str] = ..., counter: _Optional[str] = ...) -> None: ...

class DossierDelete(_message.Message):
    __slots__ = ("code",)
    CODE_FIELD_NUMBER: _ClassVar[int]
    code: str
    def __init__(self, code: _Optional[str] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("seq", "citizen_upsert", "citizen_delete", "dossier_upsert", "dossier_delete")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CITIZEN_UPSERT_FIELD_NUMBER: _ClassVar[int]
    CITIZEN_DELETE_FIELD_NUMBER: _ClassVar[int]
    DOSSIER_UPSERT_FIELD_NUMBER: _ClassVar[int]
    DOSSIER_DELETE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    citizen_upsert: CitizenUpsert
    citizen_delete: CitizenDelete
    dossier_upsert: DossierUpsert
    dossier_delete: DossierDelete
    def __init__(self, seq: _Optional[int] = ..., citizen_upsert: _Optional[_Union[CitizenUpsert, _Mapping]] = ..., citizen_delete: _Optional[_Union[CitizenDelete, _Mapping]] = ..., dossier_upsert: _Optional[_Union[DossierUpsert, _Mapping]] = ..., dossier_delete: _Optional[_Union[DossierDelete, _Mapping]] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("district_id", "epoch", "first_seq", "last_seq", "embedder_id", "dim", "changes", "origin", "published_at_ms", "request_id")
    DISTRICT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    district_id: str
    epoch: int
    first_seq: int
    last_seq: int
    embedder_id: str
    dim: int
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    origin: BatchOrigin
    published_at_ms: int
    request_id: str
    def __init__(self, district_id: _Optional[str] = ..., epoch: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., embedder_id: _Optional[str] = ..., dim: _Optional[int] = ..., changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., origin: _Optional[_Union[BatchOrigin, str]] = ..., published_at_ms: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("district_id", "epoch", "head_seq", "embedder_id", "dim", "replay_from_seq", "published_at_ms", "point", "survey", "report_receipts")
    DISTRICT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    SURVEY_FIELD_NUMBER: _ClassVar[int]
    REPORT_RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    district_id: str
    epoch: int
    head_seq: int
    embedder_id: str
    dim: int
    replay_from_seq: int
    published_at_ms: int
    point: OperatingPoint
    survey: SurveySettings
    report_receipts: bool
    def __init__(self, district_id: _Optional[str] = ..., epoch: _Optional[int] = ..., head_seq: _Optional[int] = ..., embedder_id: _Optional[str] = ..., dim: _Optional[int] = ..., replay_from_seq: _Optional[int] = ..., published_at_ms: _Optional[int] = ..., point: _Optional[_Union[OperatingPoint, _Mapping]] = ..., survey: _Optional[_Union[SurveySettings, _Mapping]] = ..., report_receipts: _Optional[bool] = ...) -> None: ...

class SurveySettings(_message.Message):
    __slots__ = ("base_url", "token_lifetime_s")
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LIFETIME_S_FIELD_NUMBER: _ClassVar[int]
    base_url: str
    token_lifetime_s: int
    def __init__(self, base_url: _Optional[str] = ..., token_lifetime_s: _Optional[int] = ...) -> None: ...

class OperatingPoint(_message.Message):
    __slots__ = ("threshold", "margin", "confirm_threshold", "target_fpir", "predicted_fpir", "gallery_size", "derived_at_ms", "method")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPIR_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FPIR_FIELD_NUMBER: _ClassVar[int]
    GALLERY_SIZE_FIELD_NUMBER: _ClassVar[int]
    DERIVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    margin: float
    confirm_threshold: float
    target_fpir: float
    predicted_fpir: float
    gallery_size: int
    derived_at_ms: int
    method: str
    def __init__(self, threshold: _Optional[float] = ..., margin: _Optional[float] = ..., confirm_threshold: _Optional[float] = ..., target_fpir: _Optional[float] = ..., predicted_fpir: _Optional[float] = ..., gallery_size: _Optional[int] = ..., derived_at_ms: _Optional[int] = ..., method: _Optional[str] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("district_id", "epoch", "embedder_id", "dim", "snapshot_id", "last_seq", "index", "last", "changes", "request_id", "citizen_count", "dossier_count", "index_graph")
    DISTRICT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CITIZEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    DOSSIER_COUNT_FIELD_NUMBER: _ClassVar[int]
    INDEX_GRAPH_FIELD_NUMBER: _ClassVar[int]
    district_id: str
    epoch: int
    embedder_id: str
    dim: int
    snapshot_id: str
    last_seq: int
    index: int
    last: bool
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    request_id: str
    citizen_count: int
    dossier_count: int
    index_graph: bytes
    def __init__(self, district_id: _Optional[str] = ..., epoch: _Optional[int] = ..., embedder_id: _Optional[str] = ..., dim: _Optional[int] = ..., snapshot_id: _Optional[str] = ..., last_seq: _Optional[int] = ..., index: _Optional[int] = ..., last: _Optional[bool] = ..., changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., request_id: _Optional[str] = ..., citizen_count: _Optional[int] = ..., dossier_count: _Optional[int] = ..., index_graph: _Optional[bytes] = ...) -> None: ...

class SnapshotFile(_message.Message):
    __slots__ = ("district_id", "epoch", "embedder_id", "dim", "snapshot_id", "last_seq", "size", "sha256", "citizen_count", "dossier_count", "url", "created_at_ms")
    DISTRICT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CITIZEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    DOSSIER_COUNT_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    district_id: str
    epoch: int
    embedder_id: str
    dim: int
    snapshot_id: str
    last_seq: int
    size: int
    sha256: bytes
    citizen_count: int
    dossier_count: int
    url: str
    created_at_ms: int
    def __init__(self, district_id: _Optional[str] = ..., epoch: _Optional[int] = ..., embedder_id: _Optional[str] = ..., dim: _Optional[int] = ..., snapshot_id: _Optional[str] = ..., last_seq: _Optional[int] = ..., size: _Optional[int] = ..., sha256: _Optional[bytes] = ..., citizen_count: _Optional[int] = ..., dossier_count: _Optional[int] = ..., url: _Optional[str] = ..., created_at_ms: _Optional[int] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("protocol_version", "terminal_id", "district_id", "kind", "epoch", "from_seq", "request_id", "reason", "accepts_file")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[SyncRequest.Kind]
        KIND_REPLAY: _ClassVar[SyncRequest.Kind]
        KIND_SNAPSHOT: _ClassVar[SyncRequest.Kind]
    KIND_UNSPECIFIED: SyncRequest.Kind
    KIND_REPLAY: SyncRequest.Kind
    KIND_SNAPSHOT: SyncRequest.Kind
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_ID_FIELD_NUMBER: _ClassVar[int]
    DISTRICT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_FILE_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    terminal_id: str
    district_id: str
    kind: SyncRequest.Kind
    epoch: int
    from_seq: int
    request_id: str
    reason: str
    accepts_file: bool
    def __init__(self, protocol_version: _Optional[int] = ..., terminal_id: _Optional[str] = ..., district_id: _Optional[str] = ..., kind: _Optional[_Union[SyncRequest.Kind, str]] = ..., epoch: _Optional[int] = ..., from_seq: _Optional[int] = ..., request_id: _Optional[str] = ..., reason: _Optional[str] = ..., accepts_file: _Optional[bool] = ...) -> None: ...

class TerminalState(_message.Message):
    __slots__ = ("protocol_version", "terminal_id", "district_id", "epoch", "applied_seq", "gallery_size", "embedder_id", "model", "version", "last_error", "rejections", "updated_at_ms", "syncing")
    class RejectionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_ID_FIELD_NUMBER: _ClassVar[int]
    DISTRICT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    GALLERY_SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SYNCING_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    terminal_id: str
    district_id: str
    epoch: int
    applied_seq: int
    gallery_size: int
    embedder_id: str
    model: str
    version: str
    last_error: str
    rejections: _containers.ScalarMap[str, int]
    updated_at_ms: int
    syncing: bool
    def __init__(self, protocol_version: _Optional[int] = ..., terminal_id: _Optional[str] = ..., district_id: _Optional[str] = ..., epoch: _Optional[int] = ..., applied_seq: _Optional[int] = ..., gallery_size: _Optional[int] = ..., embedder_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., last_error: _Optional[str] = ..., rejections: _Optional[_Mapping[str, int]] = ..., updated_at_ms: _Optional[int] = ..., syncing: _Optional[bool] = ...) -> None: ...

class TerminalReport(_message.Message):
    __slots__ = ("protocol_version", "terminal_id", "district_id", "kind", "session_id", "time", "citizen_id", "rating", "score", "survey_token_sha256", "wants_receipt")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[TerminalReport.Kind]
        KIND_NOT_ME: _ClassVar[TerminalReport.Kind]
        KIND_RATING: _ClassVar[TerminalReport.Kind]
        KIND_SURVEY_OFFER: _ClassVar[TerminalReport.Kind]
    KIND_UNSPECIFIED: TerminalReport.Kind
    KIND_NOT_ME: TerminalReport.Kind
    KIND_RATING: TerminalReport.Kind
    KIND_SURVEY_OFFER: TerminalReport.Kind
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_ID_FIELD_NUMBER: _ClassVar[int]
    DISTRICT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    CITIZEN_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SURVEY_TOKEN_SHA256_FIELD_NUMBER: _ClassVar[int]
    WANTS_RECEIPT_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    terminal_id: str
    district_id: str
    kind: TerminalReport.Kind
    session_id: str
    time: str
    citizen_id: str
    rating: int
    score: float
    survey_token_sha256: bytes
    wants_receipt: bool
    def __init__(self, protocol_version: _Optional[int] = ..., terminal_id: _Optional[str] = ..., district_id: _Optional[str] = ..., kind: _Optional[_Union[TerminalReport.Kind, str]] = ..., session_id: _Optional[str] = ..., time: _Optional[str] = ..., citizen_id: _Optional[str] = ..., rating: _Optional[int] = ..., score: _Optional[float] = ..., survey_token_sha256: _Optional[bytes] = ..., wants_receipt: _Optional[bool] = ...) -> None: ...

class ReportReceipt(_message.Message):
    __slots__ = ("district_id", "terminal_id", "kind", "session_id")
    DISTRICT_ID_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    district_id: str
    terminal_id: str
    kind: TerminalReport.Kind
    session_id: str
    def __init__(self, district_id: _Optional[str] = ..., terminal_id: _Optional[str] = ..., kind: _Optional[_Union[TerminalReport.Kind, str]] = ..., session_id: _Optional[str] = ...) -> None: ...
