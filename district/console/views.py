"""The console's pages and form actions (an ASGI app mounted at ``/console``).

Every page but the login needs a live session; every POST form carries the session's
CSRF token (the login form a token of its own cookie); forms are URL-encoded, at most
MAX_FORM_BYTES. HTML comes from Jinja2 templates with autoescaping on, and every text a
terminal sent also goes through ``district.untrusted.shown``. No script at all: the
Content-Security-Policy forbids any (``default-src 'none'``).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from core.errors import DistrictError
from district import calibration as calib
from district.calibration import CalibrationSettings
from district.console import data
from district.console.auth import Authenticator, Session, Sessions, same_token
from district.console.i18n import pick_lang, translator
from district.fleet import FleetCache
from district.log import DistrictLog
from district.reports import suspend_for_report
from district.untrusted import shown

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
#: the session cookie; the __Host- prefix makes the browser refuse it unless Secure,
#: Path=/ and without Domain (no sibling host can set or shadow it)
COOKIE = "__Host-motcua-console"
LOGIN_COOKIE = "__Host-motcua-login"
#: largest form accepted: the biggest (login) is < 2 KB
MAX_FORM_BYTES = 8 * 1024
#: fields in one form at most (the biggest has 4)
MAX_FORM_FIELDS = 10
#: rows of the report queue and deletions shown (newest first)
PAGE_ROWS = 200
#: survey comments shown on the ratings page (newest first): up to 500 characters each,
#: so 50 keeps the page readable and small (~25 kB); older ones: pick an earlier period
COMMENT_ROWS = 50
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    # a year: the console is only ever served over TLS
    "Strict-Transport-Security": "max-age=31536000",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclasses.dataclass
class ConsoleDeps:
    """What the console reads and writes."""

    dlog: DistrictLog
    fleet: FleetCache
    auth: Authenticator
    sessions: Sessions
    calibration: CalibrationSettings = dataclasses.field(default_factory=CalibrationSettings)


class _FormLimit:
    """ASGI middleware: console POSTs are small URL-encoded forms with a Content-Length."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length", b"")
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip()
            if scope["method"] != "POST":
                code = 405
            elif not length.isdigit():
                code = 411
            elif int(length) > self.limit:
                code = 413
            elif ctype != b"application/x-www-form-urlencoded":
                code = 415
            else:
                code = 0
            if code:
                await PlainTextResponse(f"{code}\n", status_code=code,
                                        headers=SECURITY_HEADERS)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_form(request: Request) -> dict[str, str]:
    """The URL-encoded form (first value of each field); the middleware bounded it."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                       max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        return {}
    out: dict[str, str] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def _when(ts: float | None) -> str:
    if not ts:
        return "—"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _isotime(text: str) -> str:
    """A stored report time (ISO 8601 UTC) as ``YYYY-MM-DD HH:MM:SS UTC``."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return shown(text)
    if when.tzinfo is None:
        return shown(text)
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def make_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every {{ }} is HTML-escaped
        undefined=jinja2.StrictUndefined,
    )
    env.filters["u"] = shown  # text a terminal sent: no controls, bidi, bounded
    env.filters["when"] = _when
    env.filters["isotime"] = _isotime
    return env


def create_console(deps: ConsoleDeps) -> _FormLimit:
    """The console as an app to mount at ``/console`` (district/service.py)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    env = make_env()
    css = (HERE / "static" / "console.css").read_bytes()

    def page(request: Request, name: str, lang: str, status: int = 200,
             session: Session | None = None, **ctx: Any) -> HTMLResponse:
        other = "en" if lang == "vi" else "vi"
        # the language link keeps the page's other parameters (a chosen rating period)
        query = [(k, v) for k, v in request.query_params.multi_items()
                 if k in ("from", "to")] + [("lang", other)]
        html = env.get_template(name).render(
            t=translator(lang), lang=lang, other=other, session=session,
            path=request.url.path, switch=f"{request.url.path}?{urllib.parse.urlencode(query)}",
            **ctx)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def redirect(url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)

    def current(request: Request) -> Session | None:
        s = deps.sessions.get(request.cookies.get(COOKIE))
        if s is not None:
            s.lang = pick_lang(request.query_params.get("lang"), s.lang)
        return s

    def to_login(request: Request) -> RedirectResponse:
        lang = pick_lang(request.query_params.get("lang"))
        resp = redirect(f"/console/login?expired=1&lang={lang}")
        if request.cookies.get(COOKIE):
            resp.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return resp

    def forbidden(request: Request, lang: str) -> HTMLResponse:
        return page(request, "error.html", lang, 403, message_key="forbidden")

    # FastAPI reads an endpoint's signature for its parameters: the wrappers below take
    # only the request, and keep the handler's name and doc without functools.wraps
    # (whose __wrapped__ would show FastAPI the handler's own parameters)

    def signed_in(handler: Callable[[Request, Session], Response]
                  ) -> Callable[[Request], Response]:
        """A page behind a live session: none, and it is the login page."""
        def view(request: Request) -> Response:
            s = current(request)
            if s is None:
                return to_login(request)
            return handler(request, s)
        view.__name__, view.__doc__ = handler.__name__, handler.__doc__
        return view

    def form_action(handler: Callable[[Request, Session, dict[str, str]], Response]
                    ) -> Callable[[Request], Awaitable[Response]]:
        """A POST form behind a live session and its CSRF token: no session, and it is
        the login page; a missing or wrong token, 403 and nothing done."""
        async def action(request: Request) -> Response:
            s = current(request)
            if s is None:
                return to_login(request)
            form = await read_form(request)
            if not same_token(form.get("csrf"), s.csrf):
                return forbidden(request, s.lang)
            return handler(request, s, form)
        action.__name__, action.__doc__ = handler.__name__, handler.__doc__
        return action

    @app.get("/static/console.css")
    def stylesheet() -> Response:
        return Response(css, media_type="text/css", headers=SECURITY_HEADERS)

    @app.get("/")
    def root(request: Request) -> RedirectResponse:
        return redirect("/console/fleet")

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request) -> HTMLResponse:
        lang = pick_lang(request.query_params.get("lang"))
        return _login_form(request, lang, "expired" if request.query_params.get("expired")
                           else "", 200)

    def _login_form(request: Request, lang: str, error: str, status: int) -> HTMLResponse:
        token = secrets.token_urlsafe(32)
        resp = page(request, "login.html", lang, status, csrf=token, error=error)
        resp.set_cookie(LOGIN_COOKIE, token, path="/", secure=True, httponly=True,
                        samesite="strict", max_age=3600)
        return resp

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await read_form(request)
        lang = pick_lang(form.get("lang"))
        if not same_token(form.get("csrf"), request.cookies.get(LOGIN_COOKIE, "")):
            return forbidden(request, lang)
        addr = request.client.host if request.client else "?"
        user = form.get("user", "")[:64]
        verdict = deps.auth.login(user, form.get("password", ""), addr)
        if verdict != "ok":
            log.warning("console: failed login for %r from %s (%s)", shown(user), addr, verdict)
            return _login_form(request, lang, "locked" if verdict == "locked" else "wrong",
                               429 if verdict == "locked" else 401)
        s = deps.sessions.create(user, lang)
        log.info("console: %s logged in from %s", user, addr)
        resp = redirect("/console/fleet")
        resp.set_cookie(COOKIE, s.sid, path="/", secure=True, httponly=True,
                        samesite="strict")
        resp.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True,
                           samesite="strict")
        return resp

    @app.post("/logout")
    @form_action
    def logout(request: Request, s: Session, form: dict[str, str]) -> Response:
        deps.sessions.end(s.sid)
        resp = redirect(f"/console/login?lang={s.lang}")
        resp.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return resp

    @app.get("/fleet", response_class=HTMLResponse)
    @signed_in
    def fleet(request: Request, s: Session) -> Response:
        head, epoch = deps.dlog.published_seq, deps.dlog.epoch
        rows = deps.fleet.rows(head)
        snaps = {r.terminal_id: deps.fleet.last_snapshot(r.terminal_id) for r in rows}
        return page(request, "fleet.html", s.lang, session=s, rows=rows, head=head,
                    epoch=epoch, snapshots=snaps)

    @app.get("/reports", response_class=HTMLResponse)
    @signed_in
    def reports(request: Request, s: Session) -> Response:
        rows = deps.dlog.reports_reviewed("not_me", PAGE_ROWS)
        done = request.query_params.get("suspended", "")
        return page(request, "reports.html", s.lang, session=s, rows=rows,
                    suspended=done if done.isdigit() else "")

    @app.post("/reports/review")
    @form_action
    def review(request: Request, s: Session, form: dict[str, str]) -> Response:
        deps.dlog.review_report(form.get("terminal", ""), form.get("session", ""), "not_me",
                                by=s.user)
        return redirect("/console/reports")

    @app.post("/reports/suspend")
    @form_action
    def suspend(request: Request, s: Session, form: dict[str, str]) -> Response:
        """Act on one "not me" report: suspend its citizen's face until re-enrolment
        (the report is recorded with the suspension) and mark the report reviewed."""
        terminal, session = form.get("terminal", ""), form.get("session", "")
        try:
            # the report names the citizen: the browser only says which report
            seq = suspend_for_report(deps.dlog, f"{terminal}/{session}")
        except DistrictError as exc:
            log.warning("console: suspending for report %s/%s failed: %s", shown(terminal),
                        shown(session), exc)
            return page(request, "error.html", s.lang, 409, session=s,
                        message_key="suspend_unavailable")
        deps.dlog.review_report(terminal, session, "not_me", by=s.user)
        log.info("console: %s suspended a face for report %s/%s (change %d)", s.user,
                 shown(terminal), shown(session), seq)
        return redirect(f"/console/reports?suspended={seq}")

    @app.get("/deletions", response_class=HTMLResponse)
    @signed_in
    def deletions(request: Request, s: Session) -> Response:
        rows = deps.fleet.rows(deps.dlog.published_seq)
        return page(request, "deletions.html", s.lang, session=s,
                    deletions=data.deletions(deps.dlog, rows, limit=PAGE_ROWS),
                    epoch=deps.dlog.epoch)

    @app.get("/ratings", response_class=HTMLResponse)
    @signed_in
    def ratings(request: Request, s: Session) -> Response:
        today = datetime.datetime.now(datetime.timezone.utc).date()
        first = request.query_params.get("from") or (today - datetime.timedelta(days=30))\
            .isoformat()
        last = request.query_params.get("to") or today.isoformat()
        try:
            a, b = data.parse_period(first[:10], last[:10])
        except ValueError:
            return page(request, "ratings.html", s.lang, 400, session=s, summary=None,
                        first=first[:10], last=last[:10], bad=True)
        return page(request, "ratings.html", s.lang, session=s,
                    summary=data.ratings(deps.dlog, a, b), first=a.isoformat(),
                    last=b.isoformat(), bad=False,
                    comments=data.survey_comments(deps.dlog, a, b, limit=COMMENT_ROWS))

    @app.get("/calibration", response_class=HTMLResponse)
    @signed_in
    def calibration(request: Request, s: Session) -> Response:
        try:
            point = calib.stored(deps.dlog)
        except DistrictError:
            point = None
        citizens = deps.dlog.info().citizen_count
        return page(request, "calibration.html", s.lang, session=s, point=point,
                    citizens=citizens, stale=calib.is_stale(point, citizens, deps.calibration),
                    derived_at=(point.derived_at_ms / 1000 if point else None))

    return _FormLimit(app, MAX_FORM_BYTES)
