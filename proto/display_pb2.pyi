from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    SESSION_STATE_IDLE: _ClassVar[SessionState]
    SESSION_STATE_FACE_PRESENT: _ClassVar[SessionState]
    SESSION_STATE_CHALLENGE: _ClassVar[SessionState]
    SESSION_STATE_MATCHED: _ClassVar[SessionState]
    SESSION_STATE_NOT_RECOGNISED: _ClassVar[SessionState]
    SESSION_STATE_LIVENESS_FAILED: _ClassVar[SessionState]
    SESSION_STATE_TIMED_OUT: _ClassVar[SessionState]
    SESSION_STATE_ENDED: _ClassVar[SessionState]
    SESSION_STATE_CONFIRM: _ClassVar[SessionState]

class ChallengeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHALLENGE_KIND_UNSPECIFIED: _ClassVar[ChallengeKind]
    CHALLENGE_KIND_TURN_LEFT: _ClassVar[ChallengeKind]
    CHALLENGE_KIND_TURN_RIGHT: _ClassVar[ChallengeKind]
    CHALLENGE_KIND_LOOK_UP: _ClassVar[ChallengeKind]
    CHALLENGE_KIND_LOOK_DOWN: _ClassVar[ChallengeKind]

class DossierStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOSSIER_STATUS_UNSPECIFIED: _ClassVar[DossierStatus]
    DOSSIER_STATUS_RECEIVED: _ClassVar[DossierStatus]
    DOSSIER_STATUS_PROCESSING: _ClassVar[DossierStatus]
    DOSSIER_STATUS_SUPPLEMENT_REQUIRED: _ClassVar[DossierStatus]
    DOSSIER_STATUS_RESULT_READY: _ClassVar[DossierStatus]
    DOSSIER_STATUS_RETURNED: _ClassVar[DossierStatus]
    DOSSIER_STATUS_REJECTED: _ClassVar[DossierStatus]
SESSION_STATE_UNSPECIFIED: SessionState
SESSION_STATE_IDLE: SessionState
SESSION_STATE_FACE_PRESENT: SessionState
SESSION_STATE_CHALLENGE: SessionState
SESSION_STATE_MATCHED: SessionState
SESSION_STATE_NOT_RECOGNISED: SessionState
SESSION_STATE_LIVENESS_FAILED: SessionState
SESSION_STATE_TIMED_OUT: SessionState
SESSION_STATE_ENDED: SessionState
SESSION_STATE_CONFIRM: SessionState
CHALLENGE_KIND_UNSPECIFIED: ChallengeKind
CHALLENGE_KIND_TURN_LEFT: ChallengeKind
CHALLENGE_KIND_TURN_RIGHT: ChallengeKind
CHALLENGE_KIND_LOOK_UP: ChallengeKind
CHALLENGE_KIND_LOOK_DOWN: ChallengeKind
DOSSIER_STATUS_UNSPECIFIED: DossierStatus
DOSSIER_STATUS_RECEIVED: DossierStatus
DOSSIER_STATUS_PROCESSING: DossierStatus
DOSSIER_STATUS_SUPPLEMENT_REQUIRED: DossierStatus
DOSSIER_STATUS_RESULT_READY: DossierStatus
DOSSIER_STATUS_RETURNED: DossierStatus
DOSSIER_STATUS_REJECTED: DossierStatus

class WatchSessionRequest(_message.Message):
    __slots__ = ("client_name",)
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    def __init__(self, client_name: _Optional[str] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("kind", "prompt_vi", "prompt_en", "seconds_left", "progress")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VI_FIELD_NUMBER: _ClassVar[int]
    PROMPT_EN_FIELD_NUMBER: _ClassVar[int]
    SECONDS_LEFT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    kind: ChallengeKind
    prompt_vi: str
    prompt_en: str
    seconds_left: float
    progress: float
    def __init__(self, kind: _Optional[_Union[ChallengeKind, str]] = ..., prompt_vi: _Optional[str] = ..., prompt_en: _Optional[str] = ..., seconds_left: _Optional[float] = ..., progress: _Optional[float] = ...) -> None: ...

class DossierSummary(_message.Message):
    __slots__ = ("masked_code", "status", "status_label_vi", "status_label_en", "stage", "received_on", "appointment_on")
    MASKED_CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_LABEL_VI_FIELD_NUMBER: _ClassVar[int]
    STATUS_LABEL_EN_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_ON_FIELD_NUMBER: _ClassVar[int]
    APPOINTMENT_ON_FIELD_NUMBER: _ClassVar[int]
    masked_code: str
    status: DossierStatus
    status_label_vi: str
    status_label_en: str
    stage: str
    received_on: str
    appointment_on: str
    def __init__(self, masked_code: _Optional[str] = ..., status: _Optional[_Union[DossierStatus, str]] = ..., status_label_vi: _Optional[str] = ..., status_label_en: _Optional[str] = ..., stage: _Optional[str] = ..., received_on: _Optional[str] = ..., appointment_on: _Optional[str] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("masked_name", "dossiers", "pin_available", "pin_tries_left", "pin_locked_until_unix_ms", "survey_url")
    MASKED_NAME_FIELD_NUMBER: _ClassVar[int]
    DOSSIERS_FIELD_NUMBER: _ClassVar[int]
    PIN_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    PIN_TRIES_LEFT_FIELD_NUMBER: _ClassVar[int]
    PIN_LOCKED_UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SURVEY_URL_FIELD_NUMBER: _ClassVar[int]
    masked_name: str
    dossiers: _containers.RepeatedCompositeFieldContainer[DossierSummary]
    pin_available: bool
    pin_tries_left: int
    pin_locked_until_unix_ms: int
    survey_url: str
    def __init__(self, masked_name: _Optional[str] = ..., dossiers: _Optional[_Iterable[_Union[DossierSummary, _Mapping]]] = ..., pin_available: _Optional[bool] = ..., pin_tries_left: _Optional[int] = ..., pin_locked_until_unix_ms: _Optional[int] = ..., survey_url: _Optional[str] = ...) -> None: ...

class Confirmation(_message.Message):
    __slots__ = ("prompt_vi", "prompt_en", "tries_left", "wrong", "seconds_left", "ask_id4", "id4_prompt_vi", "id4_prompt_en")
    PROMPT_VI_FIELD_NUMBER: _ClassVar[int]
    PROMPT_EN_FIELD_NUMBER: _ClassVar[int]
    TRIES_LEFT_FIELD_NUMBER: _ClassVar[int]
    WRONG_FIELD_NUMBER: _ClassVar[int]
    SECONDS_LEFT_FIELD_NUMBER: _ClassVar[int]
    ASK_ID4_FIELD_NUMBER: _ClassVar[int]
    ID4_PROMPT_VI_FIELD_NUMBER: _ClassVar[int]
    ID4_PROMPT_EN_FIELD_NUMBER: _ClassVar[int]
    prompt_vi: str
    prompt_en: str
    tries_left: int
    wrong: bool
    seconds_left: float
    ask_id4: bool
    id4_prompt_vi: str
    id4_prompt_en: str
    def __init__(self, prompt_vi: _Optional[str] = ..., prompt_en: _Optional[str] = ..., tries_left: _Optional[int] = ..., wrong: _Optional[bool] = ..., seconds_left: _Optional[float] = ..., ask_id4: _Optional[bool] = ..., id4_prompt_vi: _Optional[str] = ..., id4_prompt_en: _Optional[str] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("seq", "session_id", "state", "time_unix_ms", "challenge", "match", "help_counter", "reason", "can_rate", "face_seen_unix_ms", "hint", "rated", "camera_up", "confirmation")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    HELP_COUNTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CAN_RATE_FIELD_NUMBER: _ClassVar[int]
    FACE_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    RATED_FIELD_NUMBER: _ClassVar[int]
    CAMERA_UP_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATION_FIELD_NUMBER: _ClassVar[int]
    seq: int
    session_id: str
    state: SessionState
    time_unix_ms: int
    challenge: Challenge
    match: Match
    help_counter: str
    reason: str
    can_rate: bool
    face_seen_unix_ms: int
    hint: str
    rated: bool
    camera_up: bool
    confirmation: Confirmation
    def __init__(self, seq: _Optional[int] = ..., session_id: _Optional[str] = ..., state: _Optional[_Union[SessionState, str]] = ..., time_unix_ms: _Optional[int] = ..., challenge: _Optional[_Union[Challenge, _Mapping]] = ..., match: _Optional[_Union[Match, _Mapping]] = ..., help_counter: _Optional[str] = ..., reason: _Optional[str] = ..., can_rate: _Optional[bool] = ..., face_seen_unix_ms: _Optional[int] = ..., hint: _Optional[str] = ..., rated: _Optional[bool] = ..., camera_up: _Optional[bool] = ..., confirmation: _Optional[_Union[Confirmation, _Mapping]] = ...) -> None: ...

class SubmitPinRequest(_message.Message):
    __slots__ = ("session_id", "pin")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    pin: str
    def __init__(self, session_id: _Optional[str] = ..., pin: _Optional[str] = ...) -> None: ...

class DossierDetail(_message.Message):
    __slots__ = ("code", "procedure", "status", "status_label_vi", "status_label_en", "stage", "received_on", "appointment_on", "counter")
    CODE_FIELD_NUMBER: _ClassVar[int]
    PROCEDURE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_LABEL_VI_FIELD_NUMBER: _ClassVar[int]
    STATUS_LABEL_EN_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_ON_FIELD_NUMBER: _ClassVar[int]
    APPOINTMENT_ON_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    code: str
    procedure: str
    status: DossierStatus
    status_label_vi: str
    status_label_en: str
    stage: str
    received_on: str
    appointment_on: str
    counter: str
    def __init__(self, code: _Optional[str] = ..., procedure: _Optional[str] = ..., status: _Optional[_Union[DossierStatus, str]] = ..., status_label_vi: _Optional[str] = ..., status_label_en: _Optional[str] = ..., stage: _Optional[str] = ..., received_on: _Optional[str] = ..., appointment_on: _Optional[str] = ..., counter: _Optional[str] = ...) -> None: ...

class SubmitPinResponse(_message.Message):
    __slots__ = ("ok", "tries_left", "locked", "dossiers", "locked_until_unix_ms")
    OK_FIELD_NUMBER: _ClassVar[int]
    TRIES_LEFT_FIELD_NUMBER: _ClassVar[int]
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    DOSSIERS_FIELD_NUMBER: _ClassVar[int]
    LOCKED_UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    tries_left: int
    locked: bool
    dossiers: _containers.RepeatedCompositeFieldContainer[DossierDetail]
    locked_until_unix_ms: int
    def __init__(self, ok: _Optional[bool] = ..., tries_left: _Optional[int] = ..., locked: _Optional[bool] = ..., dossiers: _Optional[_Iterable[_Union[DossierDetail, _Mapping]]] = ..., locked_until_unix_ms: _Optional[int] = ...) -> None: ...

class SubmitConfirmationRequest(_message.Message):
    __slots__ = ("session_id", "answer")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    answer: str
    def __init__(self, session_id: _Optional[str] = ..., answer: _Optional[str] = ...) -> None: ...

class SubmitConfirmationResponse(_message.Message):
    __slots__ = ("ok", "tries_left", "ended")
    OK_FIELD_NUMBER: _ClassVar[int]
    TRIES_LEFT_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    tries_left: int
    ended: bool
    def __init__(self, ok: _Optional[bool] = ..., tries_left: _Optional[int] = ..., ended: _Optional[bool] = ...) -> None: ...

class CancelConfirmationRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CancelConfirmationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NotMeRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class NotMeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RateRequest(_message.Message):
    __slots__ = ("session_id", "score")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    score: int
    def __init__(self, session_id: _Optional[str] = ..., score: _Optional[int] = ...) -> None: ...

class RateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TerminalStatus(_message.Message):
    __slots__ = ("terminal_id", "district", "version", "uptime_s", "camera_up", "camera_source", "camera_fps", "model_pack", "embedder_id", "gallery_size", "last_change_seq", "sync_lag_s", "sync_connected", "watchers", "session_state", "store_loaded", "sync_lag_changes")
    TERMINAL_ID_FIELD_NUMBER: _ClassVar[int]
    DISTRICT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    CAMERA_UP_FIELD_NUMBER: _ClassVar[int]
    CAMERA_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CAMERA_FPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_PACK_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_ID_FIELD_NUMBER: _ClassVar[int]
    GALLERY_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAST_CHANGE_SEQ_FIELD_NUMBER: _ClassVar[int]
    SYNC_LAG_S_FIELD_NUMBER: _ClassVar[int]
    SYNC_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    WATCHERS_FIELD_NUMBER: _ClassVar[int]
    SESSION_STATE_FIELD_NUMBER: _ClassVar[int]
    STORE_LOADED_FIELD_NUMBER: _ClassVar[int]
    SYNC_LAG_CHANGES_FIELD_NUMBER: _ClassVar[int]
    terminal_id: str
    district: str
    version: str
    uptime_s: float
    camera_up: bool
    camera_source: str
    camera_fps: float
    model_pack: str
    embedder_id: str
    gallery_size: int
    last_change_seq: int
    sync_lag_s: float
    sync_connected: bool
    watchers: int
    session_state: SessionState
    store_loaded: bool
    sync_lag_changes: int
    def __init__(self, terminal_id: _Optional[str] = ..., district: _Optional[str] = ..., version: _Optional[str] = ..., uptime_s: _Optional[float] = ..., camera_up: _Optional[bool] = ..., camera_source: _Optional[str] = ..., camera_fps: _Optional[float] = ..., model_pack: _Optional[str] = ..., embedder_id: _Optional[str] = ..., gallery_size: _Optional[int] = ..., last_change_seq: _Optional[int] = ..., sync_lag_s: _Optional[float] = ..., sync_connected: _Optional[bool] = ..., watchers: _Optional[int] = ..., session_state: _Optional[_Union[SessionState, str]] = ..., store_loaded: _Optional[bool] = ..., sync_lag_changes: _Optional[int] = ...) -> None: ...

class LookupImageRequest(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    def __init__(self, image: _Optional[bytes] = ...) -> None: ...

class LookupImageResponse(_message.Message):
    __slots__ = ("matched", "match", "score")
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    matched: bool
    match: Match
    score: float
    def __init__(self, matched: _Optional[bool] = ..., match: _Optional[_Union[Match, _Mapping]] = ..., score: _Optional[float] = ...) -> None: ...
