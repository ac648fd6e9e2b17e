"""The survey QR offered on a matched result screen (docs/district.md "Survey QR").

Off until the district's signed manifest carries a survey (:meth:`SurveyOffers.configure`,
called by the sync engine). Then each matched session shown gets one fresh opaque token
(``sync.survey.new_token``, 144 random bits): its URL goes to the screen only, and the
token's SHA-256, with the session and the citizen, goes to the district through the
outbox as a ``survey_offer`` report. Nothing about the citizen is in the URL.
"""

from __future__ import annotations

import logging
import threading

from edge.session.audit import Reporter
from sync.survey import PublishedSurvey, new_token, survey_url, token_sha256

log = logging.getLogger(__name__)


class SurveyOffers:
    """Makes one survey offer per matched session while the district's survey is on."""

    def __init__(self, reporter: Reporter | None, terminal_id: str = "") -> None:
        self.reporter = reporter
        self.terminal_id = terminal_id
        self._lock = threading.Lock()
        self._survey: PublishedSurvey | None = None
        #: session id -> URL of the newest offer (a repeated Matched event for the same
        #: session, e.g. after a confirmation, shows the same QR and reports nothing new)
        self._last: tuple[str, str] = ("", "")
        self.offered = 0

    def configure(self, survey: PublishedSurvey | None) -> None:
        """The district's current survey (None: off)."""
        with self._lock:
            self._survey = survey

    @property
    def enabled(self) -> bool:
        with self._lock:
            return self._survey is not None

    def offer(self, session_id: str, citizen_id: str) -> str:
        """The survey URL to show for this matched session ("" when the survey is off)."""
        with self._lock:
            survey = self._survey
            if survey is None or not session_id or not citizen_id:
                return ""
            if self._last[0] == session_id:
                return self._last[1]
            token = new_token()
            url = survey_url(survey.base_url, token)
            self._last = (session_id, url)
            self.offered += 1
        if self.reporter is not None:
            self.reporter.report("survey_offer", {
                "terminal": self.terminal_id, "session": session_id,
                "citizen_id": citizen_id, "token_sha256": token_sha256(token).hex(),
            })
        return url
