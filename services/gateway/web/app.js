// The gateway's browser page: submit a job, follow it, play the result beside its inputs, verify a video.
//
// Rules this file keeps (the page's Content-Security-Policy enforces the first two):
// - no inline script or style, no eval; only this origin is contacted;
// - every string that comes from the API or a file name is written with textContent, never parsed as HTML;
// - the API key lives in a module variable, and in sessionStorage only when the user asks for it; it is
//   never put in a URL, a cookie or localStorage.

const SESSION_KEY_NAME = "goha.apiKey";
const POLL_INTERVAL_MS = 1000;
const MAX_POLL_BACKOFF_MS = 15000;
const TERMINAL_STATES = new Set(["succeeded", "failed", "cancelled"]);

let apiKey = "";
// The job the page is following; a new submission replaces it and stops the old poll loop.
let current = { jobId: null, generation: 0 };
// Object URLs the page created; revoked when replaced so blobs do not pile up in memory.
const objectUrls = new Map();

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

// -- the key ------------------------------------------------------------------------------------------------
function loadKey() {
  const remembered = sessionStorage.getItem(SESSION_KEY_NAME);
  if (remembered) {
    apiKey = remembered;
    $("api-key").value = remembered;
    $("remember-key").checked = true;
  }
}

function updateKey() {
  apiKey = $("api-key").value.trim();
  if ($("remember-key").checked && apiKey) sessionStorage.setItem(SESSION_KEY_NAME, apiKey);
  else sessionStorage.removeItem(SESSION_KEY_NAME);
}

function forgetKey() {
  apiKey = "";
  $("api-key").value = "";
  $("remember-key").checked = false;
  sessionStorage.removeItem(SESSION_KEY_NAME);
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
}

function clearResult() {
  const video = $("result-video");
  video.removeAttribute("src");
  video.load();
  replaceObjectUrl("result", null);
  $("result-download").removeAttribute("href");
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
  return { src: replaceObjectUrl("result", blob), name: match ? match[1] : `${jobId}.mp4`, integrity };
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
  $("result-video").src = loaded.src;
  const link = $("result-download");
  link.href = loaded.src;
  link.setAttribute("download", loaded.name);
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

function renderJob(job) {
  $("job-section").hidden = false;
  setText("job-id", job.id);
  const state = $("job-state");
  state.textContent = String(job.state);
  state.dataset.state = String(job.state);
  const progress = job.progress || {};
  const fraction = typeof progress.fraction === "number" ? progress.fraction : 0;
  $("job-progress").value = job.state === "succeeded" ? 1 : Math.max(0, Math.min(1, fraction));
  setText(
    "job-frames",
    progress.frames_total ? `${progress.frames_done ?? 0} / ${progress.frames_total} frames` : "",
  );
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
  $("cancel-job").disabled = TERMINAL_STATES.has(job.state);
  $("delete-job").disabled = !TERMINAL_STATES.has(job.state) || Boolean(job.media_deleted_at);
  if (job.media_deleted_at) setText("delete-job", "Result and inputs deleted");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function followJob(jobId, generation) {
  let delay = POLL_INTERVAL_MS;
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
    if (TERMINAL_STATES.has(job.state)) {
      setStatus("submit-status", `job ${job.state}`, job.state === "succeeded" ? "ok" : "error");
      if (job.state === "succeeded") {
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

function consentTimestamp() {
  const raw = $("consent-obtained-at").value;
  const when = new Date(raw); // datetime-local is the user's local time; the API wants an explicit offset
  if (!raw || Number.isNaN(when.getTime())) throw new ApiError(0, "invalid_request", "consent date is missing");
  return when.toISOString();
}

function buildJobForm() {
  const form = new FormData();
  const portrait = $("portrait").files[0];
  const driving = $("driving-video").files[0];
  if (!portrait || !driving) throw new ApiError(0, "missing_input", "choose a portrait and a driving video");
  form.append("portrait", portrait, portrait.name);
  form.append("driving_video", driving, driving.name);
  for (const [id, field] of [
    ["motion-mode", "motion_mode"],
    ["expression-scale", "expression_scale"],
    ["smoothing", "smoothing"],
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
  let built;
  try {
    built = buildJobForm();
  } catch (error) {
    setStatus("submit-status", describeError(error), "error");
    return;
  }
  button.disabled = true;
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
    $("result-section").hidden = false;
    renderJob(job);
    setStatus("submit-status", "accepted; following the job…");
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

async function verifyVideo(event) {
  event.preventDefault();
  updateKey();
  const file = $("verify-video").files[0];
  if (!file) return;
  const button = $("verify-submit");
  button.disabled = true;
  $("verify-result").hidden = true;
  setStatus("verify-status", "checking…");
  try {
    const form = new FormData();
    form.append("video", file, file.name);
    const answer = await apiJson("/v1/verify", { method: "POST", body: form });
    renderVerify(answer);
    setStatus("verify-status", `checked ${file.name}`, "ok");
  } catch (error) {
    setStatus("verify-status", describeError(error), "error");
  } finally {
    button.disabled = false;
  }
}

// -- wiring -------------------------------------------------------------------------------------------------
function start() {
  loadKey();
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
  document.body.dataset.ready = "true"; // tests wait for this before typing
}

start();
