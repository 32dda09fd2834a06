// The gateway's browser page: submit a job, follow it, play the result beside its inputs, verify a video.
//
// Rules this file keeps (the page's Content-Security-Policy enforces the first two):
// - no inline script or style, no eval; only this origin is contacted;
// - every string that comes from the API or a file name is written with textContent, never parsed as HTML;
// - the API key lives in a module variable and this tab's sessionStorage, and in localStorage only when the
//   user ticks "remember on this device"; it is never put in a URL or a cookie. The followed job's id (not
//   a secret) is kept in the URL's fragment and sessionStorage, so a reload comes back to it.

const KEY_NAME = "goha.apiKey";
const JOB_NAME = "goha.jobId";
const HISTORY_LIMIT = 10;
const POLL_INTERVAL_MS = 1000;
const MAX_POLL_BACKOFF_MS = 15000;
const TERMINAL_STATES = new Set(["succeeded", "failed", "cancelled"]);

let apiKey = "";
// The job the page is following; a new submission replaces it and stops the old poll loop.
let current = { jobId: null, generation: 0 };
// Object URLs the page created; revoked when replaced so blobs do not pile up in memory.
const objectUrls = new Map();
// The result as it was downloaded (embedded mode), for "Verify this result".
let resultBlob = null;
// The last face check of the chosen portrait: {file, key, assetId, ok, text}.
let portraitCheck = null;
// Thumbnails of the history, by portrait asset id (object URLs, kept for the page's life).
const thumbnails = new Map();
// Input limits of this deployment, from <meta name="goha-limits">.
const limits = readLimits();

class ApiError extends Error {
  constructor(status, code, message, retryAfterS) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS;
  }
}

const $ = (id) => {
  const element = document.getElementById(id);
  if (!element) throw new Error(`page element #${id} is missing`);
  return element;
};

function setText(id, text) {
  $(id).textContent = text == null ? "" : String(text);
}

function describeError(error) {
  if (error instanceof ApiError) return `${error.code}: ${error.message}`;
  return `network_error: ${error && error.message ? error.message : String(error)}`;
}

function setStatus(id, text, kind = "info") {
  const element = $(id);
  element.textContent = text;
  element.dataset.kind = kind;
}

function readLimits() {
  const meta = document.querySelector('meta[name="goha-limits"]');
  const found = {};
  for (const part of (meta ? meta.content : "").split(";")) {
    const [name, value] = part.split("=");
    const number = Number.parseFloat(value);
    if (name && Number.isFinite(number)) found[name.trim()] = number;
  }
  return found;
}

function megabytes(bytes) {
  return `${(bytes / (1024 * 1024)).toFixed(bytes < 10 * 1024 * 1024 ? 1 : 0)} MB`;
}

function shortId(jobId) {
  return String(jobId).slice(0, 8);
}

// -- the key ------------------------------------------------------------------------------------------------
function loadKey() {
  const remembered = localStorage.getItem(KEY_NAME);
  const session = sessionStorage.getItem(KEY_NAME);
  const key = remembered || session;
  if (key) {
    apiKey = key;
    $("api-key").value = key;
    $("remember-key").checked = Boolean(remembered);
  }
}

function updateKey() {
  const previous = apiKey;
  apiKey = $("api-key").value.trim();
  if (apiKey) sessionStorage.setItem(KEY_NAME, apiKey);
  else sessionStorage.removeItem(KEY_NAME);
  if ($("remember-key").checked && apiKey) localStorage.setItem(KEY_NAME, apiKey);
  else localStorage.removeItem(KEY_NAME);
  if (apiKey !== previous) scheduleHistory();
}

function forgetKey() {
  apiKey = "";
  $("api-key").value = "";
  $("remember-key").checked = false;
  sessionStorage.removeItem(KEY_NAME);
  localStorage.removeItem(KEY_NAME);
  sessionStorage.removeItem(JOB_NAME);
  $("history-section").hidden = true;
  $("history-list").replaceChildren();
}

// -- the API ------------------------------------------------------------------------------------------------
async function api(path, { method = "GET", body = undefined, headers = {} } = {}) {
  if (!apiKey) throw new ApiError(0, "missing_key", "enter an API key first");
  const response = await fetch(path, {
    method,
    body,
    headers: { ...headers, Authorization: `Bearer ${apiKey}`, Accept: "application/json" },
    credentials: "omit",
    cache: "no-store",
    referrerPolicy: "no-referrer",
  });
  if (response.ok) return response;
  let code = `http_${response.status}`;
  let message = response.statusText || "request failed";
  try {
    const payload = await response.json();
    if (payload && payload.error) {
      code = String(payload.error.code || code);
      message = String(payload.error.message || message);
    }
  } catch {
    // Not the API's error shape (a proxy's page, say): keep the HTTP status as the code.
  }
  const retryAfter = Number.parseFloat(response.headers.get("Retry-After") || "");
  throw new ApiError(response.status, code, message, Number.isFinite(retryAfter) ? retryAfter : null);
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

function jobPath(jobId, suffix = "") {
  return `/v1/jobs/${encodeURIComponent(jobId)}${suffix}`;
}

// -- media --------------------------------------------------------------------------------------------------
function replaceObjectUrl(slot, blob) {
  const previous = objectUrls.get(slot);
  if (previous) URL.revokeObjectURL(previous);
  if (!blob) {
    objectUrls.delete(slot);
    return "";
  }
  const url = URL.createObjectURL(blob);
  objectUrls.set(slot, url);
  return url;
}

function showInputs(portraitFile, drivingFile) {
  $("input-portrait").src = replaceObjectUrl("portrait", portraitFile);
  $("input-driving").src = replaceObjectUrl("driving", drivingFile);
  $("input-portrait-figure").hidden = false;
  $("input-driving-figure").hidden = false;
}

// A job opened from the history or after a reload: the local files are gone; the portrait's thumbnail
// stands in for the portrait, the driving clip is not shown.
async function showStoredInputs(job) {
  $("input-driving").removeAttribute("src");
  replaceObjectUrl("driving", null);
  $("input-driving-figure").hidden = true;
  const url = await thumbnailUrl(job);
  $("input-portrait-figure").hidden = !url;
  if (url) $("input-portrait").src = url;
}

function clearResult() {
  const video = $("result-video");
  video.removeAttribute("src");
  video.load();
  replaceObjectUrl("result", null);
  resultBlob = null;
  const link = $("result-download");
  link.removeAttribute("href");
  link.hidden = true;
  $("verify-result").hidden = true;
  $("play-both").hidden = true;
  setText("result-sha256", "");
  setStatus("result-status", "");
}

// S3 storage: a presigned URL the video element streams from directly (range requests, no blob).
async function presignedResult(jobId) {
  const answer = await apiJson(jobPath(jobId, "/result?mode=url"));
  return { src: String(answer.url), name: `${jobId}.mp4`, integrity: null };
}

// Local storage (embedded mode): the gateway streams the file. A <video> cannot send the key, so the bytes
// come through fetch() into a blob, which also lets the page check them against the recorded digest.
async function streamedResult(jobId, generation) {
  const response = await api(jobPath(jobId, "/result"), { headers: { Accept: "video/*" } });
  const blob = await response.blob();
  if (generation !== current.generation) return null;
  const expected = (response.headers.get("X-Content-SHA256") || "").toLowerCase();
  let integrity = null;
  if (expected) {
    integrity = (await sha256Hex(blob)) === expected ? "matches" : "does not match";
    if (integrity !== "matches") {
      setStatus("result-status", "the downloaded result does not match its recorded SHA-256", "error");
      return null;
    }
  }
  const match = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
  return { src: replaceObjectUrl("result", blob), name: match ? match[1] : `${jobId}.mp4`, integrity, blob };
}

async function loadResult(jobId, generation) {
  setStatus("result-status", "fetching the result…");
  const delivery = document.querySelector('meta[name="goha-result-delivery"]');
  let loaded = null;
  if (delivery && delivery.content === "presigned") {
    try {
      loaded = await presignedResult(jobId);
    } catch (error) {
      // Storage changed since the page loaded: fall back to streaming.
      if (!(error instanceof ApiError) || error.code !== "presign_not_supported") throw error;
    }
  }
  if (!loaded) loaded = await streamedResult(jobId, generation);
  if (!loaded || generation !== current.generation) return;
  $("result-section").hidden = false;
  $("result-video").src = loaded.src;
  const link = $("result-download");
  link.href = loaded.src;
  link.setAttribute("download", loaded.name);
  link.hidden = false;
  resultBlob = loaded.blob || null;
  // The page can only send bytes it holds: with presigned S3 URLs, download and use "Verify a video".
  $("verify-result").hidden = !resultBlob;
  $("play-both").hidden = $("input-driving-figure").hidden;
  setText("result-sha256", loaded.integrity ? `SHA-256 ${loaded.integrity} the server's record` : "");
  setStatus("result-status", "result loaded", "ok");
}

async function sha256Hex(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return Array.from(new Uint8Array(digest), (byte) => byte.toString(16).padStart(2, "0")).join("");
}

function playBoth() {
  const videos = [$("input-driving"), $("result-video")];
  for (const video of videos) {
    video.pause();
    video.currentTime = 0;
  }
  for (const video of videos) {
    video.play().catch((error) => setStatus("result-status", `cannot play: ${error.message}`, "error"));
  }
}

// -- a job --------------------------------------------------------------------------------------------------
function formatSeconds(value) {
  return typeof value === "number" && Number.isFinite(value) ? `${value.toFixed(1)} s` : "–";
}

function formatEta(seconds) {
  const rounded = Math.max(0, Math.round(seconds));
  return rounded >= 60 ? `${Math.floor(rounded / 60)} min ${rounded % 60} s` : `${rounded} s`;
}

function stageText(job) {
  const progress = job.progress || {};
  return String(progress.stage_text || progress.stage || job.state || "");
}

let lastAnnounced = "";

// Screen readers hear each change of state or stage once (not every frame count).
function announce(job) {
  const progress = job.progress || {};
  const key = `${job.id}:${job.state}:${progress.stage || ""}`;
  if (key === lastAnnounced) return;
  lastAnnounced = key;
  let text = `Job ${shortId(job.id)} ${job.state}`;
  if (job.state === "running" && progress.stage) text += `: ${stageText(job)}`;
  if (job.error) text += `: ${job.error.code}`;
  setText("job-announcer", text);
}

function renderJob(job) {
  $("job-section").hidden = false;
  setText("job-id", job.id);
  const state = $("job-state");
  state.textContent = String(job.state);
  state.dataset.state = String(job.state);
  const progress = job.progress || {};
  setText("job-stage", TERMINAL_STATES.has(job.state) || stageText(job) === job.state ? "" : stageText(job));
  const fraction = typeof progress.fraction === "number" ? progress.fraction : 0;
  $("job-progress").value = job.state === "succeeded" ? 1 : Math.max(0, Math.min(1, fraction));
  setText(
    "job-frames",
    progress.frames_total ? `${progress.frames_done ?? 0} / ${progress.frames_total} frames` : "",
  );
  const eta = progress.eta_s;
  setText("job-eta", job.state === "running" && typeof eta === "number" ? `about ${formatEta(eta)} left` : "");
  const timings = job.timings || {};
  setText("job-timings", `queued ${formatSeconds(timings.queued_s)}, running ${formatSeconds(timings.running_s)}`);
  const errorBox = $("job-error");
  if (job.error) {
    errorBox.hidden = false;
    errorBox.textContent = `${job.error.code}: ${job.error.message}`;
  } else {
    errorBox.hidden = true;
    errorBox.textContent = "";
  }
  const finished = TERMINAL_STATES.has(job.state);
  // Controls that no longer apply are hidden, not just greyed out.
  $("cancel-job").hidden = finished;
  const deleteButton = $("delete-job");
  deleteButton.hidden = !finished || Boolean(job.media_deleted_at);
  deleteButton.disabled = !finished || Boolean(job.media_deleted_at);
  if (job.media_deleted_at) {
    setText("delete-job", "Result and inputs deleted");
    $("result-section").hidden = true;
  }
  if (job.state === "failed" || job.state === "cancelled") $("result-section").hidden = true;
  announce(job);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function followJob(jobId, generation) {
  let delay = POLL_INTERVAL_MS;
  let lastState = "";
  while (generation === current.generation) {
    let job;
    try {
      job = await apiJson(jobPath(jobId));
      delay = POLL_INTERVAL_MS;
    } catch (error) {
      if (generation !== current.generation) return;
      if (error instanceof ApiError && error.status !== 429 && error.status < 500) {
        setStatus("submit-status", describeError(error), "error");
        return; // a 401 or 404 will not heal by asking again
      }
      delay = error.retryAfterS ? error.retryAfterS * 1000 : Math.min(delay * 2, MAX_POLL_BACKOFF_MS);
      setStatus("submit-status", `${describeError(error)} (retrying in ${Math.round(delay / 1000)} s)`, "warn");
      await sleep(delay);
      continue;
    }
    if (generation !== current.generation) return;
    renderJob(job);
    if (job.state !== lastState) {
      lastState = job.state;
      scheduleHistory(); // the history shows the new state too
    }
    if (TERMINAL_STATES.has(job.state)) {
      setStatus("submit-status", `job ${job.state}`, job.state === "succeeded" ? "ok" : "error");
      if (job.state === "succeeded" && !job.media_deleted_at) {
        try {
          await loadResult(jobId, generation);
        } catch (error) {
          setStatus("result-status", describeError(error), "error");
        }
      }
      return;
    }
    await sleep(delay);
  }
}

// -- following a job, the history ------------------------------------------------------------------------------
function rememberJob(jobId) {
  sessionStorage.setItem(JOB_NAME, jobId);
  history.replaceState(null, "", `#job=${encodeURIComponent(jobId)}`);
}

function jobFromLocation() {
  const match = /^#job=([0-9a-fA-F-]{8,64})$/.exec(location.hash);
  return match ? match[1] : sessionStorage.getItem(JOB_NAME);
}

// Follow a job the page did not just submit (the history's "Open", a reload).
async function openJob(jobId) {
  current = { jobId, generation: current.generation + 1 };
  const generation = current.generation;
  deleteArmedUntil = 0;
  setText("delete-job", "Delete result and inputs");
  clearResult();
  $("result-section").hidden = true;
  rememberJob(jobId);
  try {
    const job = await apiJson(jobPath(jobId));
    if (generation !== current.generation) return;
    renderJob(job);
    await showStoredInputs(job);
    markCurrentInHistory();
    followJob(jobId, generation);
  } catch (error) {
    setStatus("submit-status", describeError(error), "error");
    if (error instanceof ApiError && error.status === 404) sessionStorage.removeItem(JOB_NAME);
  }
}

async function thumbnailUrl(job) {
  const assetId = job.inputs && job.inputs.portrait_asset_id;
  if (!assetId || job.media_deleted_at) return "";
  if (!thumbnails.has(assetId)) {
    const fetched = api(`/v1/assets/${encodeURIComponent(assetId)}/thumbnail`, { headers: { Accept: "image/jpeg" } })
      .then((response) => response.blob())
      .then((blob) => URL.createObjectURL(blob))
      .catch(() => "");
    thumbnails.set(assetId, fetched);
  }
  return thumbnails.get(assetId);
}

let historyTimer = 0;

function scheduleHistory() {
  clearTimeout(historyTimer);
  historyTimer = setTimeout(refreshHistory, 500);
}

function markCurrentInHistory() {
  for (const item of $("history-list").children) {
    item.dataset.current = String(item.dataset.jobId === current.jobId);
  }
}

function historyItem(job) {
  const item = document.createElement("li");
  item.dataset.jobId = job.id;
  const image = document.createElement("img");
  image.alt = "";
  thumbnailUrl(job).then((url) => {
    if (url) image.src = url;
  });
  const meta = document.createElement("div");
  meta.className = "meta";
  const id = document.createElement("code");
  id.textContent = shortId(job.id);
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = String(job.state);
  badge.dataset.state = String(job.state);
  const detail = document.createElement("span");
  detail.className = "status";
  const created = new Date(job.created_at);
  let text = Number.isNaN(created.getTime()) ? "" : created.toLocaleString();
  if (job.state === "running") text += ` · ${stageText(job)}`;
  if (job.error) text += ` · ${job.error.code}`;
  if (job.media_deleted_at) text += " · data deleted";
  detail.textContent = text;
  meta.append(id, badge, detail);
  const open = document.createElement("button");
  open.type = "button";
  open.className = "secondary";
  open.textContent = job.state === "succeeded" && !job.media_deleted_at ? "Open result" : "Open";
  open.setAttribute("aria-label", `Open job ${shortId(job.id)}`);
  open.addEventListener("click", () => {
    openJob(job.id);
    $("job-section").scrollIntoView({ block: "start" });
  });
  item.append(image, meta, open);
  return item;
}

async function refreshHistory() {
  if (!apiKey) return;
  try {
    const page = await apiJson(`/v1/jobs?limit=${HISTORY_LIMIT}`);
    const items = page.items || [];
    $("history-section").hidden = false;
    $("history-list").replaceChildren(...items.map(historyItem));
    markCurrentInHistory();
    setStatus("history-status", items.length ? "" : "no jobs yet");
  } catch (error) {
    $("history-section").hidden = false;
    $("history-list").replaceChildren();
    setStatus("history-status", describeError(error), "error");
  }
}

// -- before uploading: previews, limits, the face check ----------------------------------------------------------
function showLimits() {
  const parts = [];
  if (limits.max_upload_bytes) parts.push(`up to ${megabytes(limits.max_upload_bytes)}`);
  const portrait = [...parts];
  if (limits.max_image_pixels) portrait.push(`${(limits.max_image_pixels / 1e6).toFixed(0)} megapixels`);
  if (limits.min_image_side) portrait.push(`at least ${limits.min_image_side} px a side; one clear face`);
  setText("portrait-limits", portrait.join(", "));
  const driving = [...parts];
  if (limits.max_video_seconds) driving.push(`${limits.max_video_seconds} s`);
  if (limits.max_video_width) driving.push(`${limits.max_video_width}×${limits.max_video_height} px`);
  if (limits.max_video_fps) driving.push(`${limits.max_video_fps} fps`);
  setText("driving-limits", driving.join(", "));
}

function tooBig(file) {
  return limits.max_upload_bytes && file.size > limits.max_upload_bytes
    ? `${file.name} is ${megabytes(file.size)}; the limit is ${megabytes(limits.max_upload_bytes)}`
    : "";
}

function portraitChosen() {
  const file = $("portrait").files[0];
  portraitCheck = null;
  const preview = $("portrait-preview");
  preview.hidden = !file;
  preview.src = replaceObjectUrl("portrait-preview", file || null);
  setStatus("portrait-check", "");
  if (!file) return;
  const problem = tooBig(file);
  if (problem) {
    setStatus("portrait-check", problem, "error");
    return;
  }
  preview.onload = () => {
    const { naturalWidth: width, naturalHeight: height } = preview;
    if (limits.max_image_pixels && width * height > limits.max_image_pixels) {
      setStatus("portrait-check", `${width}×${height} is over ${limits.max_image_pixels / 1e6} megapixels`, "error");
    } else if (limits.min_image_side && Math.min(width, height) < limits.min_image_side) {
      setStatus("portrait-check", `${width}×${height} is too small (at least ${limits.min_image_side} px)`, "error");
    } else if (apiKey) {
      checkPortrait(file).catch(() => {});
    } else {
      setStatus("portrait-check", `${width}×${height}; enter your key to check the face before submitting`);
    }
  };
}

// Upload the portrait as an asset (kept and reused by the job) and run the worker's face check on it.
async function checkPortrait(file) {
  if (portraitCheck && portraitCheck.file === file && portraitCheck.key === apiKey) return portraitCheck;
  setStatus("portrait-check", "checking the face…");
  try {
    const form = new FormData();
    form.append("file", file, file.name);
    const asset = await apiJson("/v1/assets", { method: "POST", body: form });
    const answer = await apiJson(`/v1/assets/${encodeURIComponent(asset.id)}/face-check`, { method: "POST" });
    if ($("portrait").files[0] !== file) return null; // another file was chosen meanwhile
    const text = answer.ok ? `face found (${answer.width}×${answer.height})` : `${answer.code}: ${answer.message}`;
    portraitCheck = { file, key: apiKey, assetId: asset.id, ok: Boolean(answer.ok), text };
    setStatus("portrait-check", text, answer.ok ? "ok" : "error");
    return portraitCheck;
  } catch (error) {
    setStatus("portrait-check", describeError(error), "error");
    throw error;
  }
}

function drivingChosen() {
  const file = $("driving-video").files[0];
  const preview = $("driving-preview");
  preview.hidden = !file;
  preview.src = replaceObjectUrl("driving-preview", file || null);
  setStatus("driving-facts", "");
  if (!file) return;
  const problem = tooBig(file);
  if (problem) {
    setStatus("driving-facts", problem, "error");
    return;
  }
  preview.onloadedmetadata = () => {
    const { duration, videoWidth: width, videoHeight: height } = preview;
    preview.currentTime = Math.min(0.1, duration / 2); // show a frame, not a black box
    const facts = `${duration.toFixed(1)} s, ${width}×${height}, ${megabytes(file.size)}`;
    const over = [];
    if (limits.max_video_seconds && duration > limits.max_video_seconds) over.push(`longer than ${limits.max_video_seconds} s`);
    if (limits.max_video_width && (width > limits.max_video_width || height > limits.max_video_height)) {
      over.push(`larger than ${limits.max_video_width}×${limits.max_video_height}`);
    }
    setStatus("driving-facts", over.length ? `${facts}: ${over.join(", ")}` : facts, over.length ? "error" : "ok");
  };
  preview.onerror = () => setStatus("driving-facts", `${megabytes(file.size)}; this browser cannot preview it`, "warn");
}

function localNow() {
  const now = new Date();
  now.setMinutes(now.getMinutes() - now.getTimezoneOffset());
  return now.toISOString().slice(0, 16); // datetime-local wants the local wall time, no offset
}

function consentTimestamp() {
  const raw = $("consent-obtained-at").value;
  const when = new Date(raw); // datetime-local is the user's local time; the API wants an explicit offset
  if (!raw || Number.isNaN(when.getTime())) throw new ApiError(0, "invalid_request", "consent date is missing");
  return when.toISOString();
}

function buildJobForm(portraitAssetId) {
  const form = new FormData();
  const portrait = $("portrait").files[0];
  const driving = $("driving-video").files[0];
  if (!portrait || !driving) throw new ApiError(0, "missing_input", "choose a portrait and a driving video");
  form.append("portrait_asset_id", portraitAssetId); // uploaded once, by the face check
  form.append("driving_video", driving, driving.name);
  for (const [id, field] of [
    ["motion-mode", "motion_mode"],
    ["expression-scale", "expression_scale"],
    ["smoothing", "smoothing"],
    ["paste-back", "paste_back"],
    ["output-size", "output_size"],
    ["consent-subject", "consent_subject"],
    ["consent-method", "consent_method"],
    ["consent-reference", "consent_reference"],
  ]) {
    const value = $(id).value.trim();
    if (value) form.append(field, value); // empty options take the server's defaults
  }
  form.append("consent_obtained_at", consentTimestamp());
  return { form, portrait, driving };
}

async function submitJob(event) {
  event.preventDefault();
  updateKey();
  const button = $("submit-job");
  const portrait = $("portrait").files[0];
  if (!portrait || !$("driving-video").files[0]) {
    setStatus("submit-status", "missing_input: choose a portrait and a driving video", "error");
    return;
  }
  button.disabled = true;
  let built;
  try {
    // The face check comes before queueing: a portrait the worker would refuse never becomes a job.
    setStatus("submit-status", "checking the portrait…");
    const check = await checkPortrait(portrait);
    if (!check || !check.ok) {
      if (check) setStatus("submit-status", `${check.text} (choose another portrait)`, "error");
      button.disabled = false;
      return;
    }
    built = buildJobForm(check.assetId);
  } catch (error) {
    setStatus("submit-status", describeError(error), "error");
    button.disabled = false;
    return;
  }
  setStatus("submit-status", "uploading…");
  try {
    // One idempotency key per click: a retried request can never create a second job.
    const job = await apiJson("/v1/jobs", {
      method: "POST",
      body: built.form,
      headers: { "Idempotency-Key": crypto.randomUUID() },
    });
    current = { jobId: job.id, generation: current.generation + 1 };
    deleteArmedUntil = 0;
    setText("delete-job", "Delete result and inputs");
    clearResult();
    showInputs(built.portrait, built.driving);
    $("result-section").hidden = true; // shown once there is a result
    renderJob(job);
    rememberJob(job.id);
    setStatus("submit-status", "accepted; following the job…");
    $("job-section").scrollIntoView({ block: "start" });
    $("job-title").focus({ preventScroll: true });
    scheduleHistory();
    followJob(job.id, current.generation);
  } catch (error) {
    setStatus("submit-status", describeError(error), "error");
  } finally {
    button.disabled = false;
  }
}

async function cancelJob() {
  if (!current.jobId) return;
  try {
    renderJob(await apiJson(jobPath(current.jobId, "/cancel"), { method: "POST" }));
  } catch (error) {
    setStatus("submit-status", describeError(error), "error");
  }
}

// Deleting is final: the first click arms the button, a second one within a few seconds deletes.
const DELETE_ARM_MS = 5000;
let deleteArmedUntil = 0;

async function deleteJob() {
  if (!current.jobId) return;
  const button = $("delete-job");
  if (Date.now() > deleteArmedUntil) {
    deleteArmedUntil = Date.now() + DELETE_ARM_MS;
    setText("delete-job", "Click again to delete");
    setTimeout(() => {
      if (!button.disabled && Date.now() > deleteArmedUntil) setText("delete-job", "Delete result and inputs");
    }, DELETE_ARM_MS + 50);
    return;
  }
  deleteArmedUntil = 0;
  button.disabled = true;
  const generation = current.generation;
  try {
    const job = await apiJson(jobPath(current.jobId), { method: "DELETE" });
    if (generation !== current.generation) return;
    clearResult();
    renderJob(job);
    setStatus("submit-status", "result and inputs deleted; the signed provenance record stays", "ok");
    scheduleHistory();
  } catch (error) {
    button.disabled = false;
    setText("delete-job", "Delete result and inputs");
    setStatus("submit-status", describeError(error), "error");
  }
}

// -- verify -------------------------------------------------------------------------------------------------
function yesNo(value) {
  if (value === true) return "yes";
  if (value === false) return "no";
  return "–";
}

function renderVerify(answer) {
  $("verify-result").hidden = false;
  const state = $("verify-state");
  state.textContent = String(answer.status);
  state.dataset.state = String(answer.status);
  setText("verify-message", answer.message);
  const mark = answer.watermark;
  setText("verify-watermark", mark ? `found: ${yesNo(mark.found)}${mark.found ? `, payload ${mark.payload}` : ""}` : "–");
  const manifest = answer.manifest;
  setText(
    "verify-manifest",
    manifest ? `present: ${yesNo(manifest.present)}, valid: ${yesNo(manifest.valid)}, trusted: ${yesNo(manifest.trusted)}` : "–",
  );
  setText("verify-job", answer.job_id ? `${answer.job_id}${answer.same_tenant ? " (yours)" : ""}` : "none named");
  const list = $("verify-checks");
  list.replaceChildren();
  const checks = Object.entries(answer.checks || {});
  for (const [name, value] of checks) {
    const item = document.createElement("li");
    item.textContent = `${name.replaceAll("_", " ")}: ${yesNo(value)}`;
    item.dataset.ok = String(value === true);
    list.append(item);
  }
  if (checks.length === 0) {
    const item = document.createElement("li");
    item.textContent = "none (no job named, nothing to check against)";
    list.append(item);
  }
  setText("verify-json", JSON.stringify(answer, null, 2));
}

async function verifyBlob(blob, name, button) {
  button.disabled = true;
  $("verify-result").hidden = true;
  setStatus("verify-status", `checking ${name}…`);
  try {
    const form = new FormData();
    form.append("video", blob, name);
    const answer = await apiJson("/v1/verify", { method: "POST", body: form });
    renderVerify(answer);
    setStatus("verify-status", `checked ${name}`, "ok");
  } catch (error) {
    setStatus("verify-status", describeError(error), "error");
  } finally {
    button.disabled = false;
  }
}

async function verifyVideo(event) {
  event.preventDefault();
  updateKey();
  const file = $("verify-video").files[0];
  if (!file) return;
  await verifyBlob(file, file.name, $("verify-submit"));
}

// "Verify this result": the bytes the page downloaded, sent to /v1/verify in one click.
async function verifyResult() {
  if (!resultBlob) return;
  $("verify-section").scrollIntoView({ block: "start" });
  await verifyBlob(resultBlob, $("result-download").getAttribute("download") || "result.mp4", $("verify-result"));
}

// -- wiring -------------------------------------------------------------------------------------------------
function start() {
  loadKey();
  showLimits();
  $("consent-obtained-at").value = localNow();
  $("portrait").addEventListener("change", portraitChosen);
  $("driving-video").addEventListener("change", drivingChosen);
  $("verify-result").addEventListener("click", verifyResult);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    updateKey();
  });
  $("api-key").addEventListener("input", updateKey);
  $("remember-key").addEventListener("change", updateKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("job-form").addEventListener("submit", submitJob);
  $("cancel-job").addEventListener("click", cancelJob);
  $("delete-job").addEventListener("click", deleteJob);
  $("play-both").addEventListener("click", playBoth);
  $("verify-form").addEventListener("submit", verifyVideo);
  if (apiKey) {
    refreshHistory();
    const jobId = jobFromLocation();
    if (jobId) openJob(jobId); // a reload comes back to the job it was following
  }
  document.body.dataset.ready = "true"; // tests wait for this before typing
}

start();
