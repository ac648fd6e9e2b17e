"""The survey pages for citizens' phones: ``GET /s/{token}`` and ``POST /s/{token}`` on
the district's HTTP app (docs/district.md "Survey QR"; the store and its rules are in
district/survey.py).

The phone's browser is untrusted: bodies are bounded (MAX_FORM_BYTES), requests are
limited per address (district.survey.AddressLimiter), the page has no script, no image
and a strict CSP (its one style allowed by hash), and is never cached or framed. An
unknown token may be an offer that has not arrived yet: its 404 page reloads itself
every PENDING_RETRY_S seconds, PENDING_TRIES times, then says the code is unknown.
"""

from __future__ import annotations

import base64
import hashlib
import html
import ipaddress
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from district.survey import MAX_COMMENT_CHARS, AddressLimiter, SurveyStore
from sync.survey import TOKEN_RE

#: largest answer body: 500 characters of Vietnamese percent-encoded are <= 500 x 9 bytes
#: (3 UTF-8 bytes, each %XX), plus the rating and field names
MAX_FORM_BYTES = 8 << 10
#: an unknown token's page reloads itself this often ...
PENDING_RETRY_S = 3
#: ... this many times (30 s): an offer is normally stored ~1 s after the QR appeared
#: (outbox poll 0.5 s + broker + writer), and scanning takes longer than that
PENDING_TRIES = 10

def client_address(request: Request, trusted_proxies: tuple[str, ...]) -> str:
    """The phone's address: the peer, or the right-most X-Forwarded-For entry when the
    peer is a trusted proxy (the entry that proxy added itself)."""
    peer = request.client.host if request.client is not None else ""
    if peer in trusted_proxies:
        forwarded = request.headers.get("x-forwarded-for", "")[:1024]
        last = forwarded.rsplit(",", 1)[-1].strip()
        try:
            return str(ipaddress.ip_address(last))
        except ValueError:
            pass
    return peer


# ---- the pages -------------------------------------------------------------------------

#: the five answers, 1 to 5 (the kiosk's rating words)
_LABELS: dict[str, list[str]] = {
    "vi": ["Rất không hài lòng", "Không hài lòng", "Bình thường", "Hài lòng", "Rất hài lòng"],
    "en": ["Very poor", "Poor", "Fair", "Good", "Very good"],
}
_TEXT: dict[str, dict[str, str]] = {
    "vi": {
        "title": "Đánh giá mức độ hài lòng",
        "intro": "Quý khách vui lòng đánh giá việc tiếp nhận và giải quyết hồ sơ tại Bộ "
                 "phận Một cửa.",
        "comment": f"Góp ý thêm (không bắt buộc, tối đa {MAX_COMMENT_CHARS} ký tự)",
        "submit": "Gửi đánh giá",
        "other": "English",
        "thanks_title": "Cảm ơn quý khách!",
        "thanks": "Ý kiến của quý khách đã được ghi nhận.",
        "used_title": "Mã này đã được dùng",
        "used": "Mỗi mã QR chỉ dùng để đánh giá một lần. Cảm ơn quý khách.",
        "expired_title": "Mã đã hết hạn",
        "expired": "Mã QR chỉ dùng được trong một thời gian ngắn sau khi tra cứu.",
        "pending_title": "Đang chờ máy tra cứu gửi mã…",
        "pending": "Nếu quý khách vừa quét mã tại máy tra cứu, trang sẽ tự tải lại sau "
                   "vài giây.",
        "unknown_title": "Không tìm thấy mã",
        "unknown": "Mã QR không hợp lệ hoặc đã hết hạn.",
        "no_rating": "Xin chọn một mức đánh giá.",
        "too_long": f"Góp ý tối đa {MAX_COMMENT_CHARS} ký tự.",
        "bad_form": "Yêu cầu không hợp lệ.",
        "busy_title": "Quá nhiều yêu cầu",
        "busy": "Xin thử lại sau ít phút.",
    },
    "en": {
        "title": "How satisfied were you?",
        "intro": "Please rate how the one-stop office received and handled your dossier.",
        "comment": f"Comment (optional, at most {MAX_COMMENT_CHARS} characters)",
        "submit": "Send",
        "other": "Tiếng Việt",
        "thanks_title": "Thank you!",
        "thanks": "Your answer has been recorded.",
        "used_title": "This code has been used",
        "used": "Each QR code can be answered once. Thank you.",
        "expired_title": "This code has expired",
        "expired": "A QR code can be answered only for a short while after the lookup.",
        "pending_title": "Waiting for the terminal…",
        "pending": "If you have just scanned the code at the terminal, this page reloads "
                   "itself in a few seconds.",
        "unknown_title": "Code not found",
        "unknown": "This QR code is not valid or has expired.",
        "no_rating": "Please choose a rating.",
        "too_long": f"At most {MAX_COMMENT_CHARS} characters, please.",
        "bad_form": "The request is not valid.",
        "busy_title": "Too many requests",
        "busy": "Please try again in a few minutes.",
    },
}

_STYLE = (
    "body{margin:0;font-family:system-ui,sans-serif;background:#f4f6fa;color:#13203a}"
    "main{max-width:32rem;margin:0 auto;padding:1rem}"
    "header{display:flex;justify-content:space-between;align-items:center}"
    "h1{font-size:1.4rem}a{color:#1d5fbf}"
    "fieldset{border:0;padding:0;margin:0 0 1rem}"
    "label.r{display:block;margin:.4rem 0;padding:.8rem 1rem;background:#fff;"
    "border:2px solid #ccd3e0;border-radius:.6rem;font-size:1.1rem}"
    "label.r input{margin-right:.7rem;transform:scale(1.4)}"
    "textarea{width:100%;box-sizing:border-box;min-height:6rem;font:inherit;padding:.5rem}"
    "button{width:100%;margin-top:1rem;padding:1rem;font-size:1.2rem;font-weight:700;"
    "color:#fff;background:#b3261e;border:0;border-radius:.6rem}"
    ".err{color:#b3261e;font-weight:700}"
)
#: the page's only style, allowed by its hash: no other style, no script, no image
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _page(lang: str, body: str, *, status: int, refresh: str = "",
          other_query: str = "") -> HTMLResponse:
    t = _TEXT[lang]
    other = "en" if lang == "vi" else "vi"
    meta = (f'<meta http-equiv="refresh" content="{PENDING_RETRY_S};url={refresh}">'
            if refresh else "")
    doc = (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'{meta}<title>{html.escape(t["title"])}</title><style>{_STYLE}</style></head>'
        f'<body><main><header><strong>Một Cửa</strong>'
        f'<a href="?lang={other}{other_query}" hreflang="{other}">{html.escape(t["other"])}</a>'
        f'</header>{body}</main></body></html>')
    return HTMLResponse(doc, status_code=status, headers=SECURITY_HEADERS)


def _message(lang: str, kind: str, *, status: int, refresh: str = "",
             other_query: str = "") -> HTMLResponse:
    t = _TEXT[lang]
    body = (f'<h1 id="{kind}">{html.escape(t[kind + "_title"])}</h1>'
            f'<p>{html.escape(t[kind])}</p>')
    return _page(lang, body, status=status, refresh=refresh, other_query=other_query)


def _form(lang: str, *, error: str = "", comment: str = "", status: int = 200
          ) -> HTMLResponse:
    t = _TEXT[lang]
    options = "".join(
        f'<label class="r"><input type="radio" name="rating" value="{n}" required>'
        f'{n} – {html.escape(label)}</label>'
        for n, label in zip(range(5, 0, -1), reversed(_LABELS[lang]), strict=True))
    err = f'<p class="err" id="error">{html.escape(t[error])}</p>' if error else ""
    body = (
        f'<h1 id="survey">{html.escape(t["title"])}</h1><p>{html.escape(t["intro"])}</p>'
        f'{err}<form method="post"><input type="hidden" name="lang" value="{lang}">'
        f'<fieldset>{options}</fieldset>'
        f'<label for="comment">{html.escape(t["comment"])}</label>'
        f'<textarea id="comment" name="comment" maxlength="{MAX_COMMENT_CHARS}">'
        f'{html.escape(comment)}</textarea>'
        f'<button type="submit" id="send">{html.escape(t["submit"])}</button></form>')
    return _page(lang, body, status=status)


def _lang(value: str | None) -> str:
    return value if value in _TEXT else "vi"


_STATUS_PAGE = {"used": ("used", 410), "expired": ("expired", 410),
                "unknown": ("unknown", 404)}


def mount_survey(app: FastAPI, store: SurveyStore, *,
                 limiter: AddressLimiter | None = None,
                 trusted_proxies: tuple[str, ...] = ()) -> AddressLimiter:
    """Add ``GET`` and ``POST /s/{token}`` to the district's HTTP app (not in its
    published OpenAPI schema: they are pages for phones, not an API); returns the
    per-address limiter they use."""
    limiter = limiter or AddressLimiter()

    def limited(request: Request, lang: str) -> HTMLResponse | None:
        if limiter.admit(client_address(request, trusted_proxies)):
            return None
        resp = _message(lang, "busy", status=429)
        resp.headers["Retry-After"] = "60"
        return resp

    @app.get("/s/{token}", response_class=HTMLResponse, include_in_schema=False)
    def survey_page(token: str, request: Request) -> HTMLResponse:
        lang = _lang(request.query_params.get("lang"))
        busy = limited(request, lang)
        if busy is not None:
            return busy
        status = store.status(token)
        if status == "open":
            return _form(lang)
        if status == "unknown" and TOKEN_RE.match(token):
            tries = request.query_params.get("try", "0")
            n = int(tries) if tries.isdigit() and len(tries) <= 3 else PENDING_TRIES
            if n < PENDING_TRIES:
                resp = _message(lang, "pending", status=404,
                                refresh=f"?lang={lang}&try={n + 1}", other_query=f"&try={n}")
                resp.headers["Retry-After"] = str(PENDING_RETRY_S)
                return resp
        kind, code = _STATUS_PAGE[status]
        return _message(lang, kind, status=code)

    @app.post("/s/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def survey_answer(token: str, request: Request) -> HTMLResponse:
        lang = _lang(request.query_params.get("lang"))
        busy = limited(request, lang)
        if busy is not None:
            return busy
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) > MAX_FORM_BYTES:
            return _page(lang, f'<p class="err">{html.escape(_TEXT[lang]["bad_form"])}</p>',
                         status=413)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        # the BodyLimit middleware already refused a missing or huge Content-Length;
        # uvicorn hands over no more than it says
        body = await request.body()
        try:
            if ctype != "application/x-www-form-urlencoded" or len(body) > MAX_FORM_BYTES:
                raise ValueError("not a form")
            form = parse_qs(body.decode("ascii"), keep_blank_values=True,
                            max_num_fields=8, encoding="utf-8", errors="strict")
        except ValueError:
            return _page(lang, f'<p class="err">{html.escape(_TEXT[lang]["bad_form"])}</p>',
                         status=400)
        lang = _lang((form.get("lang") or [lang])[0])
        comment = (form.get("comment") or [""])[0].replace("\r\n", "\n").strip()
        comment = "".join(c for c in comment if c == "\n" or c.isprintable())
        rating_s = (form.get("rating") or [""])[0]
        status = await run_in_threadpool(store.status, token)
        if status != "open":
            kind, code = _STATUS_PAGE[status]
            return _message(lang, kind, status=code)
        if rating_s not in ("1", "2", "3", "4", "5"):
            return _form(lang, error="no_rating", comment=comment[:MAX_COMMENT_CHARS],
                         status=400)
        if len(comment) > MAX_COMMENT_CHARS:
            return _form(lang, error="too_long", comment=comment[:MAX_COMMENT_CHARS],
                         status=400)
        verdict = await run_in_threadpool(store.answer, token, int(rating_s), comment)
        if verdict == "ok":
            return _message(lang, "thanks", status=200)
        kind, code = _STATUS_PAGE[verdict]
        return _message(lang, kind, status=code)

    return limiter


