// Kiosk screen: renders the terminal's session state (Server-Sent Events from /events),
// sends the citizen's taps (PIN, date of birth, not me, rating) back as POSTs. No framework,
// no build step.
"use strict";

const T = {
  vi: {
    office: "Bộ phận Một cửa — Tra cứu hồ sơ",
    other_lang: "English",
    idle_title: "Tra cứu hồ sơ bằng khuôn mặt",
    idle_steps: [
      "Đứng trước màn hình, cách khoảng một sải tay.",
      "Nhìn thẳng vào camera phía trên màn hình.",
      "Làm theo hướng dẫn trên màn hình.",
    ],
    idle_note: "Không lưu ảnh khuôn mặt của quý khách.",
    face_title: "Đang nhận diện…",
    face_sub: "Xin giữ yên và nhìn thẳng vào camera.",
    hint_too_small: "Xin tiến lại gần hơn.",
    hint_blurry: "Xin giữ yên.",
    hint_not_frontal: "Xin nhìn thẳng vào camera.",
    hint_too_dark: "Ánh sáng quá tối.",
    challenge_title: "Xác minh người thật",
    greeting: "Xin chào",
    your_dossiers: "Hồ sơ của quý khách",
    no_dossiers: "Hiện không có hồ sơ nào đang giải quyết.",
    code: "Mã hồ sơ",
    stage: "Đang xử lý tại",
    received_on: "Ngày tiếp nhận",
    appointment_on: "Ngày hẹn trả",
    not_set: "chưa có",
    not_me: "Không phải tôi",
    details: "Xem chi tiết (mã PIN)",
    rate_title: "Quý khách đánh giá dịch vụ thế nào?",
    rate_thanks: "Cảm ơn quý khách đã đánh giá!",
    survey_title: "Góp ý trên điện thoại",
    survey_sub: "Quét mã QR để đánh giá mức độ hài lòng. Mã chỉ dùng một lần, không chứa thông tin cá nhân.",
    rate_labels: ["Rất không hài lòng", "Không hài lòng", "Bình thường", "Hài lòng", "Rất hài lòng"],
    not_recognised_title: "Không nhận diện được",
    go_to_counter: (n) => `Xin vui lòng đến quầy số ${n} để được hỗ trợ.`,
    liveness_failed_title: "Chưa xác minh được",
    liveness_failed_sub: "Xin thử lại và làm theo hướng dẫn.",
    timed_out_title: "Đã hết thời gian",
    timed_out_sub: "Xin thử lại.",
    ended_title: "Cảm ơn quý khách!",
    ended_sub: "Chúc quý khách một ngày tốt lành.",
    ended_not_me: "Đã ghi nhận. Xin lỗi quý khách vì sự nhầm lẫn.",
    disconnected_title: "Máy đang khởi động lại",
    disconnected_sub: "Đang kết nối lại… Xin vui lòng chờ trong giây lát.",
    camera_down: "Camera đang gặp sự cố. Xin vui lòng đến quầy hướng dẫn.",
    pin_title: "Nhập mã PIN",
    details_title: "Chi tiết hồ sơ",
    pin_wrong: (n) => `Mã PIN không đúng. Còn ${n} lần thử.`,
    pin_locked: "Đã nhập sai quá số lần cho phép.",
    pin_locked_until: (hm) => `Mã PIN tạm khoá đến ${hm} do nhập sai nhiều lần. Xin vui lòng đến quầy hướng dẫn nếu cần hỗ trợ.`,
    pin_error: "Không gửi được. Xin thử lại.",
    procedure: "Thủ tục",
    counter: "Quầy trả kết quả",
    close: "Đóng",
    ok: "Xác nhận",
    del: "Xóa",
    confirm_title: "Xác nhận người tra cứu",
    confirm_prompt: "Vui lòng nhập ngày sinh (ngày/tháng/năm) để xác nhận",
    confirm_wrong: (n) => `Ngày sinh không đúng. Còn ${n} lần thử.`,
    confirm_invalid: "Ngày không hợp lệ. Xin nhập đủ 8 chữ số: ngày, tháng, năm.",
    confirm_cancel: "Hủy",
    confirm_locked: "Đã nhập sai quá số lần cho phép. Việc xác nhận bằng ngày sinh tạm thời bị khóa.",
    confirm_failed: "Ngày sinh không khớp.",
    confirm_timeout: "Đã hết thời gian nhập ngày sinh.",
    id4_prompt: "Vui lòng nhập 4 số cuối của số định danh cá nhân (trên thẻ CCCD)",
    id4_wrong: (n) => `Ngày sinh hoặc 4 số cuối không đúng. Còn ${n} lần thử.`,
    id4_invalid: "Xin nhập đủ 4 chữ số.",
  },
  en: {
    office: "One-stop office — Dossier lookup",
    other_lang: "Tiếng Việt",
    idle_title: "Look up your dossiers with your face",
    idle_steps: [
      "Stand in front of the screen, about an arm's length away.",
      "Look straight at the camera above the screen.",
      "Follow the instructions on the screen.",
    ],
    idle_note: "No picture of your face is kept.",
    face_title: "Recognising…",
    face_sub: "Please hold still and look at the camera.",
    hint_too_small: "Please come closer.",
    hint_blurry: "Please hold still.",
    hint_not_frontal: "Please look straight at the camera.",
    hint_too_dark: "It is too dark.",
    challenge_title: "Liveness check",
    greeting: "Hello",
    your_dossiers: "Your dossiers",
    no_dossiers: "You have no dossiers in progress.",
    code: "Dossier code",
    stage: "Now at",
    received_on: "Received on",
    appointment_on: "Ready on",
    not_set: "not set",
    not_me: "Not me",
    details: "Details (PIN)",
    rate_title: "How was our service?",
    rate_thanks: "Thank you for your rating!",
    survey_title: "Feedback on your phone",
    survey_sub: "Scan the QR code to rate our service. It works once and holds no personal data.",
    rate_labels: ["Very poor", "Poor", "Fair", "Good", "Very good"],
    not_recognised_title: "Not recognised",
    go_to_counter: (n) => `Please go to counter ${n} for help.`,
    liveness_failed_title: "Could not verify",
    liveness_failed_sub: "Please try again and follow the instructions.",
    timed_out_title: "Time is up",
    timed_out_sub: "Please try again.",
    ended_title: "Thank you!",
    ended_sub: "Have a nice day.",
    ended_not_me: "Noted. We are sorry for the mix-up.",
    disconnected_title: "The terminal is restarting",
    disconnected_sub: "Reconnecting… Please wait a moment.",
    camera_down: "The camera is out of order. Please ask at the help desk.",
    pin_title: "Enter your PIN",
    details_title: "Dossier details",
    pin_wrong: (n) => `Wrong PIN. ${n} tries left.`,
    pin_locked: "Too many wrong PINs.",
    pin_locked_until: (hm) => `PIN entry is locked until ${hm} after too many wrong PINs. Please ask at the help desk if you need help.`,
    pin_error: "Could not send. Please try again.",
    procedure: "Procedure",
    counter: "Collect at counter",
    close: "Close",
    ok: "OK",
    del: "Delete",
    confirm_title: "Confirm it is you",
    confirm_prompt: "Please enter your date of birth (day/month/year) to confirm",
    confirm_wrong: (n) => `Wrong date of birth. ${n} tries left.`,
    confirm_invalid: "Not a valid date. Please enter 8 digits: day, month, year.",
    confirm_cancel: "Cancel",
    confirm_locked: "Too many wrong answers. Confirmation by date of birth is locked for a while.",
    confirm_failed: "The date of birth did not match.",
    confirm_timeout: "Time to enter the date of birth is up.",
    id4_prompt: "Please enter the last 4 digits of your personal identification number (on your ID card)",
    id4_wrong: (n) => `Wrong date of birth or last 4 digits. ${n} tries left.`,
    id4_invalid: "Please enter all 4 digits.",
  },
};

const params = new URLSearchParams(location.search);
let lang = params.get("lang") || document.documentElement.dataset.defaultLang || "vi";
if (!(lang in T)) lang = "vi";
let state = { state: "loading", connected: false };
let pin = "";
let pinSession = "";
// the date of birth being typed (DDMMYYYY digits) and the session it belongs to
let dob = "";
let dobSession = "";
let dobMsg = "";
// then, when the terminal asks for them, the last 4 digits of the personal number;
// dobDone: the date is typed and checked, the keypad now takes the 4 digits
let id4 = "";
let dobDone = false;
let ratedSession = "";
// after this long on a final screen with no news, the page clears itself (the terminal
// normally sends idle first); 20 s is enough to read a result
const CLEAR_AFTER_MS = 20000;
let clearTimer = null;

function t(key, ...args) {
  const v = T[lang][key];
  return typeof v === "function" ? v(...args) : v;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    // CSSOM, not a style attribute: the page's CSP allows no inline style
    else if (k === "style") Object.assign(node.style, v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return node;
}

// a lock's end as "HH:MM" (today) or "HH:MM dd/mm" (a later day), local time
function fmtLockEnd(ms) {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return d.toDateString() === new Date().toDateString() ? hm : `${hm} ${pad(d.getDate())}/${pad(d.getMonth() + 1)}`;
}

function pinLockedUntil(m) {
  return m && m.pin_locked_until_unix_ms > Date.now() ? m.pin_locked_until_unix_ms : 0;
}

function fmtDate(iso) {
  if (!iso) return t("not_set");
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(iso);
  return m ? `${m[3]}/${m[2]}/${m[1]}` : iso;
}

function post(path, body) {
  return fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  }).then((r) => r.json().then((j) => ({ status: r.status, body: j })));
}

function dossierCard(d) {
  return el("article", { class: `card status-${d.status}` },
    el("div", { class: "card-head" },
      el("span", { class: "code" }, d.masked_code),
      el("span", { class: "badge" }, lang === "vi" ? d.status_label_vi : d.status_label_en)),
    d.stage ? el("div", { class: "row" }, el("span", { class: "lbl" }, t("stage") + ": "), d.stage) : null,
    el("div", { class: "row dates" },
      el("span", {}, el("span", { class: "lbl" }, t("received_on") + ": "), fmtDate(d.received_on)),
      el("span", {}, el("span", { class: "lbl" }, t("appointment_on") + ": "), fmtDate(d.appointment_on))));
}

function ratingBlock(s) {
  if (s.rated || ratedSession === s.session_id) {
    return el("div", { class: "rating done" }, t("rate_thanks"));
  }
  if (!s.can_rate) return null;
  const buttons = [1, 2, 3, 4, 5].map((n) =>
    el("button", {
      type: "button", class: `star star-${n}`, "data-score": String(n),
      title: T[lang].rate_labels[n - 1],
      onclick: () => {
        post("/api/rate", { session_id: s.session_id, score: n }).then((r) => {
          if (r.status === 200) { ratedSession = s.session_id; render(); }
        });
      },
    }, "★", el("small", {}, T[lang].rate_labels[n - 1])));
  return el("div", { class: "rating" }, el("div", { class: "rate-title" }, t("rate_title")), el("div", { class: "stars" }, buttons));
}

function viewFor(s) {
  switch (s.state) {
    case "loading":
    case "disconnected":
      return el("div", { class: "center" },
        el("div", { class: "spinner" }),
        el("h1", {}, t("disconnected_title")),
        el("p", { class: "sub" }, t("disconnected_sub")));
    case "idle":
      return el("div", { class: "center idle" },
        el("div", { class: "face-icon" }, "☺"),
        el("h1", {}, t("idle_title")),
        el("ol", { class: "steps" }, T[lang].idle_steps.map((x) => el("li", {}, x))),
        el("p", { class: "note" }, t("idle_note")));
    case "face_present": {
      const hint = s.hint && s.hint !== "ok" ? t("hint_" + s.hint) : null;
      return el("div", { class: "center" },
        el("div", { class: "spinner" }),
        el("h1", {}, t("face_title")),
        el("p", { class: "sub" }, hint || t("face_sub")));
    }
    case "challenge": {
      const c = s.challenge || {};
      const arrows = { turn_left: "←", turn_right: "→", look_up: "↑", look_down: "↓" };
      const pct = Math.round(100 * Math.max(0, Math.min(1, c.progress || 0)));
      return el("div", { class: "center challenge" },
        el("p", { class: "sub" }, t("challenge_title")),
        el("div", { class: "arrow" }, arrows[c.kind] || "•"),
        el("h1", { class: "prompt" }, lang === "vi" ? c.prompt_vi : c.prompt_en),
        el("div", { class: "progress" }, el("div", { class: "bar", style: { width: `${pct}%` } })));
    }
    case "matched": {
      const m = s.match || { dossiers: [] };
      const main = el("div", { class: "matched" },
        el("h1", { class: "name" }, `${t("greeting")}, `, el("span", { class: "masked-name" }, m.masked_name)),
        el("h2", {}, t("your_dossiers")),
        m.dossiers.length
          ? el("div", { class: "cards" }, m.dossiers.map(dossierCard))
          : el("p", { class: "sub" }, t("no_dossiers")),
        el("div", { class: "actions" },
          m.pin_available && !pinLockedUntil(m) ? el("button", { type: "button", id: "btn-pin", class: "btn primary", onclick: () => openPin(s) }, t("details")) : null,
          el("button", {
            type: "button", id: "btn-notme", class: "btn warn",
            onclick: () => post("/api/notme", { session_id: s.session_id }),
          }, t("not_me"))),
        pinLockedUntil(m) ? el("p", { id: "pin-locked", class: "sub locked" }, t("pin_locked_until", fmtLockEnd(m.pin_locked_until_unix_ms))) : null,
        ratingBlock(s));
      if (!m.survey_url) return main;
      // the district's survey: the page server renders the QR of the result on screen
      return el("div", { class: "with-survey" }, main,
        el("aside", { id: "survey", class: "survey" },
          el("h2", {}, t("survey_title")),
          el("img", { id: "survey-qr", src: `/survey-qr.svg?s=${encodeURIComponent(s.session_id)}`, alt: "QR" }),
          el("p", { class: "sub" }, t("survey_sub"))));
    }
    case "confirm":
      return confirmView(s);
    case "not_recognised": {
      const why = { confirm_locked: "confirm_locked", confirm_failed: "confirm_failed",
        confirm_timeout: "confirm_timeout" }[s.reason];
      return el("div", { class: "center result bad" },
        el("div", { class: "big-icon" }, "?"),
        el("h1", {}, t("not_recognised_title")),
        why ? el("p", { id: "confirm-end", class: `sub ${why === "confirm_locked" ? "locked" : ""}` }, t(why)) : null,
        el("p", { class: "sub counter" }, t("go_to_counter", s.help_counter || "1")));
    }
    case "liveness_failed":
      return el("div", { class: "center result bad" },
        el("div", { class: "big-icon" }, "!"),
        el("h1", {}, t("liveness_failed_title")),
        el("p", { class: "sub" }, t("liveness_failed_sub")),
        el("p", { class: "sub counter" }, t("go_to_counter", s.help_counter || "1")));
    case "timed_out":
      return el("div", { class: "center result bad" },
        el("div", { class: "big-icon" }, "⏱"),
        el("h1", {}, t("timed_out_title")),
        el("p", { class: "sub" }, t("timed_out_sub")),
        el("p", { class: "sub counter" }, t("go_to_counter", s.help_counter || "1")));
    case "ended":
      return el("div", { class: "center result good" },
        el("h1", {}, t("ended_title")),
        el("p", { class: "sub" }, s.reason === "not_me" ? t("ended_not_me") : t("ended_sub")),
        ratingBlock(s));
    default:
      return el("div", { class: "center" }, el("h1", {}, s.state));
  }
}

// --- date of birth (confirmation step) ------------------------------------------------
// The screen knows nothing about who the face might be: it only sends the typed date.

function dobMask() {
  const d = dob.padEnd(8, "_");
  return `${d.slice(0, 2)} / ${d.slice(2, 4)} / ${d.slice(4)}`;
}

function realDate(x) {
  if (!/^[0-9]{8}$/.test(x)) return false;
  const day = +x.slice(0, 2), month = +x.slice(2, 4), year = +x.slice(4);
  if (year < 1900 || year > 2099) return false;
  const d = new Date(Date.UTC(year, month - 1, day));
  return d.getUTCFullYear() === year && d.getUTCMonth() === month - 1 && d.getUTCDate() === day;
}

function id4Mask() {
  return id4.padEnd(4, "_").split("").join(" ");
}

function confirmView(s) {
  const c = s.confirmation || {};
  if (dobSession !== s.session_id) {
    dob = ""; id4 = ""; dobDone = false; dobMsg = ""; dobSession = s.session_id;
  }
  const askId4 = !!c.ask_id4;
  if (!askId4) dobDone = false;
  const onId4 = askId4 && dobDone;
  const msg = dobMsg || (c.wrong ? t(askId4 ? "id4_wrong" : "confirm_wrong", c.tries_left) : "");
  const keys = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "del", "0", "ok"].map((k) =>
    el("button", {
      type: "button", class: `key key-${k}`, "data-key": k,
      onclick: () => pressDob(k, s.session_id, askId4),
    }, k === "del" ? t("del") : k === "ok" ? t("ok") : k));
  const prompt = onId4
    ? ((lang === "vi" ? c.id4_prompt_vi : c.id4_prompt_en) || t("id4_prompt"))
    : ((lang === "vi" ? c.prompt_vi : c.prompt_en) || t("confirm_prompt"));
  return el("div", { class: "center confirm" },
    el("p", { class: "sub" }, t("confirm_title")),
    el("h1", { id: "confirm-prompt", class: "confirm-prompt", "data-step": onId4 ? "id4" : "dob" },
      prompt),
    el("div", { id: "dob-field", class: "dob-field" }, onId4 ? id4Mask() : dobMask()),
    el("div", { id: "dob-msg", class: "dob-msg" }, msg),
    el("div", { id: "dob-keys", class: "dob-keys" }, keys),
    el("button", {
      type: "button", id: "btn-confirm-cancel", class: "btn",
      onclick: () => post("/api/confirm_cancel", { session_id: s.session_id }),
    }, t("confirm_cancel")));
}

function pressDob(k, sessionId, askId4) {
  dobMsg = "";
  if (askId4 && dobDone) {  // the 4 digits of the personal number
    if (k === "del") {
      if (id4) id4 = id4.slice(0, -1);
      else dobDone = false;  // back to the date
    } else if (k === "ok") {
      if (!/^[0-9]{4}$/.test(id4)) { dobMsg = t("id4_invalid"); render(); return; }
      submitConfirm(sessionId, dob + id4, true);
    } else if (id4.length < 4) id4 += k;
    render();
    return;
  }
  if (k === "del") dob = dob.slice(0, -1);
  else if (k === "ok") {
    if (!realDate(dob)) { dob = ""; dobMsg = t("confirm_invalid"); render(); return; }
    if (askId4) { dobDone = true; id4 = ""; render(); return; }
    submitConfirm(sessionId, dob, false);
  } else if (dob.length < 8) dob += k;
  render();
}

function submitConfirm(sessionId, answer, withId4) {
  // the typed digits are forgotten at once; a wrong answer starts again from the date
  dob = ""; id4 = ""; dobDone = false;
  post("/api/confirm", { session_id: sessionId, answer }).then((r) => {
    const wrong = withId4 ? "id4_wrong" : "confirm_wrong";
    if (r.status === 200 && !r.body.ok && !r.body.ended) dobMsg = t(wrong, r.body.tries_left);
    else if (r.status !== 200 && r.body.code === "INVALID_ARGUMENT") dobMsg = t("confirm_invalid");
    else if (r.status !== 200) dobMsg = t("pin_error");
    render();
  });
}

function render() {
  document.documentElement.lang = lang;
  document.querySelectorAll("[data-t]").forEach((n) => { n.textContent = t(n.dataset.t); });
  document.getElementById("lang").textContent = T[lang].other_lang;
  const screen = document.getElementById("screen");
  screen.dataset.state = state.state;
  screen.dataset.session = state.session_id || "";
  const view = document.getElementById("view");
  view.replaceChildren(viewFor(state));
  const banner = document.getElementById("banner");
  const camDown = state.connected && state.camera_up === false;
  banner.hidden = !camDown;
  banner.textContent = camDown ? t("camera_down") : "";
  if (pinSession && pinSession !== state.session_id) closePin();
}

function onState(s) {
  state = s;
  if (clearTimer) clearTimeout(clearTimer);
  if (["not_recognised", "liveness_failed", "timed_out", "ended"].includes(s.state)) {
    clearTimer = setTimeout(() => { state = Object.assign({}, state, { state: "idle" }); render(); }, CLEAR_AFTER_MS);
  }
  render();
}

// --- PIN pad ---------------------------------------------------------------------------

function setPinTitle(key) {
  const h = document.querySelector(".pin-box h2");
  h.dataset.t = key;
  h.textContent = t(key);
}

function openPin(s) {
  pin = "";
  document.querySelector(".pin-box").classList.remove("details");
  setPinTitle("pin_title");
  pinSession = s.session_id;
  document.getElementById("pin-details").replaceChildren();
  document.getElementById("pin-msg").textContent = "";
  document.getElementById("pinpad").hidden = false;
  drawPin();
}

function closePin() {
  pin = "";
  pinSession = "";
  document.getElementById("pin-details").replaceChildren();
  document.getElementById("pinpad").hidden = true;
}

function drawPin() {
  document.getElementById("pin-dots").textContent = "●".repeat(pin.length) + "○".repeat(Math.max(0, 4 - pin.length));
  const keys = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "del", "0", "ok"].map((k) =>
    el("button", {
      type: "button", class: `key key-${k}`, "data-key": k,
      onclick: () => pressKey(k),
    }, k === "del" ? t("del") : k === "ok" ? t("ok") : k));
  document.getElementById("pin-keys").replaceChildren(...keys);
}

function pressKey(k) {
  const msg = document.getElementById("pin-msg");
  if (k === "del") pin = pin.slice(0, -1);
  else if (k === "ok") {
    post("/api/pin", { session_id: pinSession, pin }).then((r) => {
      pin = "";
      if (r.status === 200 && r.body.ok) {
        msg.textContent = "";
        showDetails(r.body.dossiers);
        return;
      } else if (r.status === 200) {
        msg.textContent = r.body.locked_until_unix_ms
          ? t("pin_locked_until", fmtLockEnd(r.body.locked_until_unix_ms))
          : r.body.locked ? t("pin_locked") : t("pin_wrong", r.body.tries_left);
      } else if (r.body.code === "RESOURCE_EXHAUSTED") {
        msg.textContent = t("pin_locked");
      } else {
        msg.textContent = t("pin_error");
      }
      drawPin();
    });
    return;
  } else if (pin.length < 8) pin += k;
  drawPin();
}

function showDetails(dossiers) {
  const rows = dossiers.map((d) => el("article", { class: `card status-${d.status}` },
    el("div", { class: "card-head" }, el("span", { class: "code" }, d.code),
      el("span", { class: "badge" }, lang === "vi" ? d.status_label_vi : d.status_label_en)),
    el("div", { class: "row" }, el("span", { class: "lbl" }, t("procedure") + ": "), d.procedure),
    d.stage ? el("div", { class: "row" }, el("span", { class: "lbl" }, t("stage") + ": "), d.stage) : null,
    el("div", { class: "row dates" },
      el("span", {}, el("span", { class: "lbl" }, t("received_on") + ": "), fmtDate(d.received_on)),
      el("span", {}, el("span", { class: "lbl" }, t("appointment_on") + ": "), fmtDate(d.appointment_on))),
    d.counter ? el("div", { class: "row" }, el("span", { class: "lbl" }, t("counter") + ": "), d.counter) : null));
  document.getElementById("pin-keys").replaceChildren();
  document.getElementById("pin-dots").textContent = "";
  document.querySelector(".pin-box").classList.add("details");
  setPinTitle("details_title");
  document.getElementById("pin-details").replaceChildren(...rows);
}

// --- wiring ----------------------------------------------------------------------------

document.getElementById("lang").addEventListener("click", () => {
  lang = lang === "vi" ? "en" : "vi";
  render();
  if (pinSession) drawPin();
});
document.getElementById("pin-close").addEventListener("click", closePin);

function tick() {
  const d = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  document.getElementById("clock").textContent =
    `${pad(d.getHours())}:${pad(d.getMinutes())}  ${pad(d.getDate())}/${pad(d.getMonth() + 1)}/${d.getFullYear()}`;
}
setInterval(tick, 1000);
tick();

function connect() {
  // EventSource reconnects by itself (the server sends "retry: 1000"); while it is down
  // the page says so instead of showing stale data
  const es = new EventSource("/events");
  es.onmessage = (e) => onState(JSON.parse(e.data));
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
    onState({ state: "disconnected", connected: false });
  };
}
render();
connect();
