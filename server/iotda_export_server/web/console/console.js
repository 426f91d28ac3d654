// The web console: sign in with a token, list, create, watch, download, cancel and delete export
// tasks, list batch tasks. Plain DOM (text only, never markup from data); the token lives in this
// tab's sessionStorage and goes out only as the X-Auth-Token header.

import { Api, ApiError, ndjson } from "./api.js";

// domain/rules.py: BATCH_TASK_TYPES, BATCH_STATUSES, LIST_OFFSET_MAX (tests/test_console.py keeps them equal).
const BATCH_TASK_TYPES = [
  "softwareUpgrade", "firmwareUpgrade", "moduleUpgrade", "createDevices", "deleteDevices",
  "freezeDevices", "unfreezeDevices", "createCommands", "createAsyncCommands", "createMessages",
  "updateDeviceShadows", "updateDevices", "changeGateway",
];
const BATCH_STATUSES = [
  "Initializing", "Waitting", "Processing", "Success", "Fail", "PartialSuccess", "Stopped", "Stopping",
];
const LIST_OFFSET_MAX = 500;
const DEFAULT_TASK_TYPE = "firmwareUpgrade";
const FINAL_STATUSES = new Set(["Success", "Failed"]);
const SESSION_KEY = "iotda-export-console";
// Browsers open at most 6 HTTP/1.1 connections to one server: progress streams take at most 4 of
// them, other unfinished tasks on the page are refreshed every REFRESH_MS.
const MAX_STREAMS = 4;
const REFRESH_MS = 5000;
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 8000;
// The server sends a heartbeat every 15 s: a stream silent for longer than this is dead.
const STREAM_SILENCE_MS = 40000;
const DELETE_CONFIRM_MS = 5000;
const MAX_MESSAGES = 5;

const $ = (id) => document.getElementById(id);
const numberFormat = new Intl.NumberFormat("en-US");
const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

const state = {
  api: null,
  exports: null,
  batches: null,
  tasks: new Map(), // export_task_id -> the latest export task seen
  streams: new Map(), // export_task_id -> ProgressStream
  downloadAllowedAt: 0,
  countdownTimer: 0,
  refreshTimer: 0,
  loads: { exports: 0, batches: 0, picker: 0 }, // the latest load of each list: older answers are dropped
};

// A new load of `list`; `current()` tells whether it is still the latest when its answer arrives.
function newLoad(list) {
  const ticket = ++state.loads[list];
  return () => state.loads[list] === ticket && state.api !== null;
}

// -- small DOM helpers -----------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function timeCell(text, parse) {
  if (!text) return el("td", {}, "—");
  const date = parse(text);
  return el("td", {}, Number.isNaN(date.getTime()) ? text : el("time", { datetime: date.toISOString(), title: text },
    timeFormat.format(date)));
}

const exportTime = (text) => new Date(text); // yyyy-MM-ddTHH:mm:ss.SSSZ
const batchTime = (text) => { // yyyyMMddTHHmmssZ
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(text);
  return m ? new Date(`${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}Z`) : new Date(Number.NaN);
};

// -- messages ---------------------------------------------------------------------------------------

function notice(text) {
  $("notice").textContent = text;
}

function showError(error, context) {
  const box = $("messages");
  const lines = [el("p", {}, el("strong", {}, `${context}: `), error.message || String(error))];
  if (error instanceof ApiError) {
    const meta = [];
    if (error.errorCode) meta.push(el("code", { class: "error-code" }, error.errorCode));
    if (error.status) meta.push(`HTTP ${error.status}`);
    if (error.requestId) meta.push(el("span", {}, "request id ", el("code", { class: "request-id" }, error.requestId)));
    if (meta.length) lines.push(el("p", { class: "meta" }, meta.flatMap((part, i) => (i ? [" · ", part] : [part]))));
  } else {
    console.error(error); // a fault of the console itself, never a response (it holds no token)
  }
  const item = el("div", { class: "message error", role: "alert" }, lines,
    el("button", { type: "button", class: "dismiss", "aria-label": "Dismiss this message" }, "×"));
  item.querySelector(".dismiss").addEventListener("click", () => item.remove());
  box.prepend(item);
  while (box.children.length > MAX_MESSAGES) box.lastElementChild.remove();
}

function clearMessages() {
  $("messages").replaceChildren();
  notice("");
}

// -- session ----------------------------------------------------------------------------------------

function loadSession() {
  try {
    const doc = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    if (doc && typeof doc.projectId === "string" && typeof doc.token === "string" && doc.projectId && doc.token) {
      return { projectId: doc.projectId, token: doc.token, instanceId: doc.instanceId || "" };
    }
  } catch {
    // unreadable: sign in again
  }
  return null;
}

async function signIn(event) {
  event.preventDefault();
  const session = {
    projectId: $("project-id").value.trim(),
    token: $("token").value.trim(),
    instanceId: $("instance-id").value.trim(),
  };
  if (!session.projectId || !session.token) return;
  const button = $("sign-in-button");
  button.disabled = true;
  clearMessages();
  try {
    const api = new Api(session);
    await api.listExportTasks({ limit: 1 }); // the token and the project, checked by the server
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    $("token").value = "";
    enter(session);
  } catch (error) {
    showError(error, "Sign-in failed");
  } finally {
    button.disabled = false;
  }
}

function signOut(message) {
  for (const stream of state.streams.values()) stream.stop();
  state.streams.clear();
  state.tasks.clear();
  clearInterval(state.refreshTimer);
  clearInterval(state.countdownTimer);
  state.downloadAllowedAt = 0;
  sessionStorage.removeItem(SESSION_KEY);
  state.api = null;
  $("exports-body").replaceChildren();
  $("batches-body").replaceChildren();
  $("create-task").replaceChildren();
  $("download-wait").hidden = true;
  $("app").hidden = true;
  $("whoami").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-form").reset();
  if (message) notice(message);
  $("project-id").focus();
}

function enter(session) {
  state.api = new Api(session);
  state.exports = new Pager(Number($("exports-limit").value));
  state.batches = new Pager(Number($("batches-limit").value));
  $("whoami-project").textContent = session.projectId;
  $("whoami-instance-id").textContent = session.instanceId;
  $("whoami-instance").hidden = !session.instanceId;
  $("whoami").hidden = false;
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("exports-title").focus();
  state.refreshTimer = setInterval(refreshUnwatched, REFRESH_MS);
  loadExports();
  loadPicker();
  loadBatches();
}

// A refusal of the credentials in the middle of a session ends it.
function failed(error, context) {
  showError(error, context);
  if (error instanceof ApiError && error.status === 401) signOut("Signed out: the server no longer accepts the token.");
}

// -- paging (the platform's limit, marker and offset) ----------------------------------------------

class Pager {
  constructor(limit) {
    this.limit = limit;
    this.reset();
  }

  reset() {
    this.marker = "";
    this.offset = 0;
    this.position = 0; // index of this page's first record among all
    this.history = [];
    this.count = 0;
    this.nextMarker = "";
    this.shown = 0;
  }

  query() {
    const q = { limit: this.limit };
    if (this.marker) q.marker = this.marker;
    if (this.offset) q.offset = this.offset;
    return q;
  }

  received(page, shown) {
    this.count = page ? page.count : 0;
    this.nextMarker = page ? page.marker : "";
    this.shown = shown;
  }

  get pages() {
    return Math.max(1, Math.ceil(this.count / this.limit));
  }

  get number() {
    return Math.floor(this.position / this.limit) + 1;
  }

  hasNext() {
    return Boolean(this.nextMarker) && this.position + this.shown < this.count;
  }

  hasPrevious() {
    return this.position > 0;
  }

  next() {
    this.history.push({ marker: this.marker, offset: this.offset, position: this.position });
    this.marker = this.nextMarker;
    this.offset = 0;
    this.position += this.shown;
  }

  previous() {
    const last = this.history.pop();
    if (last) {
      ({ marker: this.marker, offset: this.offset, position: this.position } = last);
    } else {
      this.marker = "";
      this.offset = Math.max(0, this.position - this.limit);
      this.position = this.offset;
    }
  }

  // Page n from the newest record by offset (the platform skips at most LIST_OFFSET_MAX).
  goTo(n) {
    const offset = (n - 1) * this.limit;
    if (!Number.isInteger(n) || n < 1 || offset > LIST_OFFSET_MAX) return false;
    this.reset();
    this.offset = offset;
    this.position = offset;
    return true;
  }

  describe(noun) {
    if (!this.count) return `No ${noun}`;
    const first = this.position + 1;
    const last = this.position + this.shown;
    return `Page ${this.number} of ${this.pages} · ${noun} ${first}–${last} of ${numberFormat.format(this.count)}`;
  }
}

// -- export tasks -----------------------------------------------------------------------------------

async function loadExports() {
  if (!state.api) return;
  const pager = state.exports;
  const current = newLoad("exports");
  try {
    const { data } = await state.api.listExportTasks(pager.query());
    if (!current()) return;
    const tasks = data.export_tasks || [];
    if (!tasks.length && pager.position > 0) { // the page emptied (deletions): go back one
      pager.previous();
      return loadExports();
    }
    pager.received(data.page, tasks.length);
    for (const task of tasks) state.tasks.set(task.export_task_id, task);
    renderExports(tasks);
  } catch (error) {
    if (current()) failed(error, "Listing export tasks failed");
  }
}

function renderExports(tasks) {
  const body = $("exports-body");
  body.replaceChildren(...tasks.map(exportRow));
  if (!tasks.length) {
    body.append(el("tr", {}, el("td", { colspan: 8, class: "empty" }, "No export tasks yet: create one below.")));
  }
  const pager = state.exports;
  $("exports-page").textContent = pager.describe("tasks");
  $("exports-prev").disabled = !pager.hasPrevious();
  $("exports-next").disabled = !pager.hasNext();
  $("exports-goto").max = String(Math.min(pager.pages, Math.floor(LIST_OFFSET_MAX / pager.limit) + 1));
  syncStreams(tasks);
}

function scopeText(task) {
  return task.app_type === "APP" ? `APP · ${task.app_id || "default"}` : task.app_type || "GLOBAL";
}

function exportRow(task) {
  const id = task.export_task_id;
  const stream = state.streams.get(id);
  const live = stream ? stream.state : "";
  const statusCell = el("td", { class: "status" },
    el("span", { class: `badge status-${task.status}` }, task.status),
    live === "live" ? el("span", { class: "live", title: "Progress arrives as it happens" }, "live") : null,
    live === "reconnecting" ? el("span", { class: "reconnecting" }, "reconnecting…") : null,
    task.status_desc ? el("p", { class: "desc" }, task.status_desc) : null);
  const progress = Math.max(0, Math.min(100, task.progress || 0));
  const waiting = Date.now() < state.downloadAllowedAt;
  const actions = el("td", { class: "actions" },
    el("button", {
      type: "button", dataset: { action: "download" }, disabled: !task.file_available || waiting,
      "aria-label": `Download export ${id}`,
    }, "Download"),
    el("button", {
      type: "button", dataset: { action: "cancel" }, disabled: task.status !== "Processing",
      "aria-label": `Cancel export ${id}`,
    }, "Cancel"),
    el("button", { type: "button", class: "danger", dataset: { action: "delete" }, "aria-label": `Delete export ${id}` },
      "Delete"));
  return el("tr", { dataset: { exportId: id, status: task.status } },
    el("td", {}, el("code", { class: "id" }, id)),
    statusCell,
    el("td", { class: "progress" },
      el("progress", { max: 100, value: progress, "aria-label": `Progress of export ${id}` }),
      el("span", { class: "percent" }, `${progress} %`)),
    el("td", { class: "num rows", dataset: { count: String(task.export_count) } }, numberFormat.format(task.export_count)),
    timeCell(task.create_time, exportTime),
    timeCell(task.end_time, exportTime),
    el("td", {}, scopeText(task)),
    actions);
}

function updateRow(task) {
  state.tasks.set(task.export_task_id, task);
  const old = document.querySelector(`tr[data-export-id="${CSS.escape(task.export_task_id)}"]`);
  if (old) old.replaceWith(exportRow(task));
}

async function onExportAction(event) {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const id = button.closest("tr").dataset.exportId;
  const action = button.dataset.action;
  if (action === "download") await download(id, button);
  else if (action === "cancel") await cancel(id, button);
  else if (action === "delete") await remove(id, button);
}

async function download(id, button) {
  if (Date.now() < state.downloadAllowedAt) return;
  button.disabled = true;
  notice(`Downloading export ${id}…`);
  try {
    const { blob, fileName } = await state.api.download(id);
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: fileName, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    notice(`Downloaded ${fileName} (${numberFormat.format(blob.size)} bytes).`);
  } catch (error) {
    notice("");
    if (error instanceof ApiError && error.status === 403 && error.errorCode === "IOTDA.018003" && error.retryAfter) {
      startCountdown(error.retryAfter);
    }
    failed(error, `Download of export ${id} refused`);
  } finally {
    const task = state.tasks.get(id);
    if (task) updateRow(task);
  }
}

// One download per 30 s per user: the buttons wait for Retry-After, counting down.
function startCountdown(seconds) {
  state.downloadAllowedAt = Date.now() + seconds * 1000;
  clearInterval(state.countdownTimer);
  const wait = $("download-wait");
  const tick = () => {
    const left = Math.ceil((state.downloadAllowedAt - Date.now()) / 1000);
    if (left <= 0) {
      clearInterval(state.countdownTimer);
      wait.hidden = true;
      wait.textContent = "";
      for (const task of state.tasks.values()) updateRow(task);
      notice("Downloads are possible again.");
      return;
    }
    wait.hidden = false;
    wait.textContent = `Next download possible in ${left} s (one download per 30 s).`;
  };
  tick();
  for (const task of state.tasks.values()) updateRow(task);
  state.countdownTimer = setInterval(tick, 250);
}

async function cancel(id, button) {
  button.disabled = true;
  try {
    const { data } = await state.api.cancelExportTask(id);
    updateRow(data);
    notice(`Export ${id} cancelled.`);
  } catch (error) {
    button.disabled = false;
    failed(error, `Cancel of export ${id} refused`);
  }
}

async function remove(id, button) {
  if (button.dataset.confirm !== "yes") { // the first click asks, the second deletes
    button.dataset.confirm = "yes";
    button.textContent = "Confirm delete";
    notice(`Press "Confirm delete" to delete export ${id} and its file.`);
    setTimeout(() => {
      if (button.isConnected) {
        button.dataset.confirm = "";
        button.textContent = "Delete";
      }
    }, DELETE_CONFIRM_MS);
    return;
  }
  button.disabled = true;
  try {
    await state.api.deleteExportTask(id);
    stopStream(id);
    state.tasks.delete(id);
    notice(`Export ${id} deleted.`);
    await loadExports();
  } catch (error) {
    button.disabled = false;
    failed(error, `Delete of export ${id} refused`);
  }
}

// Unfinished tasks on the page beyond the streams' budget: re-read with the list.
function refreshUnwatched() {
  if (!state.api) return;
  const unwatched = [...document.querySelectorAll("#exports-body tr[data-status=Processing]")]
    .some((row) => !state.streams.has(row.dataset.exportId));
  if (!unwatched) return;
  const pager = state.exports;
  const current = newLoad("exports");
  state.api.listExportTasks(pager.query()).then(({ data }) => {
    if (!current()) return;
    const tasks = data.export_tasks || [];
    pager.received(data.page, tasks.length);
    for (const task of tasks) state.tasks.set(task.export_task_id, task);
    renderExports(tasks);
  }, () => {}); // a periodic refresh stays quiet: the next one, or the user's, tells
}

// -- live progress: WatchProgress as newline-delimited JSON ---------------------------------------

class ProgressStream {
  constructor(id) {
    this.id = id;
    this.state = "connecting";
    this.stopped = false;
    this.controller = null;
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  setState(next) {
    if (this.state === next) return;
    const was = this.state;
    this.state = next;
    if (next === "reconnecting") notice(`Progress of export ${this.id}: connection lost, reconnecting…`);
    if (next === "live" && was === "reconnecting") notice(`Progress of export ${this.id}: reconnected.`);
    const task = state.tasks.get(this.id);
    if (task) updateRow(task);
  }

  async run() {
    let delay = RECONNECT_MIN_MS;
    while (!this.stopped) {
      this.controller = new AbortController();
      let silence = 0;
      const watchdog = () => {
        clearTimeout(silence);
        silence = setTimeout(() => this.controller.abort(), STREAM_SILENCE_MS);
      };
      let finished = false;
      try {
        watchdog();
        const response = await state.api.openProgress(this.id, this.controller.signal);
        for await (const line of ndjson(response)) {
          watchdog();
          if (line.result && line.result.export_task) {
            const task = line.result.export_task;
            delay = RECONNECT_MIN_MS;
            this.setState("live");
            state.tasks.set(task.export_task_id, task);
            updateRow(task);
            finished = FINAL_STATUSES.has(task.status);
          }
          // {"error": ...}: the stream ends with it; reconnecting tells the rest.
        }
      } catch (error) {
        if (this.stopped) return;
        if (error instanceof ApiError && !error.transient) { // gone, or no longer ours: stop
          this.finish();
          failed(error, `Progress of export ${this.id}`);
          return;
        }
      } finally {
        clearTimeout(silence);
      }
      if (this.stopped) return;
      if (finished) {
        this.finish();
        return;
      }
      this.setState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, RECONNECT_MAX_MS);
    }
  }

  finish() {
    this.stopped = true;
    state.streams.delete(this.id);
    const task = state.tasks.get(this.id);
    if (task) updateRow(task);
    if (task && FINAL_STATUSES.has(task.status)) notice(`Export ${this.id}: ${task.status}.`);
  }
}

function stopStream(id) {
  const stream = state.streams.get(id);
  if (stream) {
    stream.stop();
    state.streams.delete(id);
  }
}

// Streams for the unfinished tasks shown (newest first, up to MAX_STREAMS); none for the others.
function syncStreams(tasks) {
  const shown = new Set(tasks.filter((t) => t.status === "Processing").map((t) => t.export_task_id));
  for (const id of [...state.streams.keys()]) if (!shown.has(id)) stopStream(id);
  for (const id of shown) {
    if (state.streams.size >= MAX_STREAMS) break;
    if (!state.streams.has(id)) {
      const stream = new ProgressStream(id);
      state.streams.set(id, stream);
      stream.run();
    }
  }
}

// -- creating an export -----------------------------------------------------------------------------

async function loadPicker(selectId) {
  if (!state.api) return;
  const select = $("create-task");
  const type = $("create-type").value;
  select.replaceChildren(el("option", { value: "", disabled: true, selected: true }, "Loading…"));
  const current = newLoad("picker");
  try {
    const { data } = await state.api.listBatchTasks({ task_type: type, limit: 50 });
    if (!current()) return;
    const tasks = data.batchtasks || [];
    select.replaceChildren(...tasks.map((t) => el("option", { value: t.task_id },
      `${t.task_name} · ${numberFormat.format(t.task_progress ? t.task_progress.total : 0)} sub-tasks · ${t.status} · ${t.task_id}`)));
    if (!tasks.length) {
      select.append(el("option", { value: "", disabled: true, selected: true }, `No ${type} batch tasks`));
    }
    if (selectId) select.value = selectId;
  } catch (error) {
    if (!current()) return;
    select.replaceChildren(el("option", { value: "", disabled: true, selected: true }, "Could not load the batch tasks"));
    failed(error, "Listing batch tasks failed");
  }
}

async function createExport(event) {
  event.preventDefault();
  const taskId = $("create-task").value;
  if (!taskId) {
    showError(new Error("Choose a batch task first."), "New export");
    return;
  }
  const appType = document.querySelector("input[name=app_type]:checked").value;
  const body = { resource_type: "BatchTask", resource_condition: { task_id: taskId }, export_format: "xls",
    app_type: appType, request_id: crypto.randomUUID() }; // a double submit creates once
  if (appType === "APP" && $("create-app-id").value.trim()) body.app_id = $("create-app-id").value.trim();
  const button = $("create-button");
  button.disabled = true;
  try {
    const { data } = await state.api.createExportTask(body);
    notice(`Export task ${data.export_task_id} created (${data.status}).`);
    state.exports.reset();
    await loadExports();
    $("exports-title").scrollIntoView({ block: "start" });
  } catch (error) {
    failed(error, "Create refused");
  } finally {
    button.disabled = false;
  }
}

// -- batch tasks ------------------------------------------------------------------------------------

async function loadBatches() {
  if (!state.api) return;
  const pager = state.batches;
  const query = { ...pager.query(), task_type: $("batches-type").value, status: $("batches-status").value };
  const current = newLoad("batches");
  try {
    const { data } = await state.api.listBatchTasks(query);
    if (!current()) return;
    const tasks = data.batchtasks || [];
    pager.received(data.page, tasks.length);
    const body = $("batches-body");
    body.replaceChildren(...tasks.map(batchRow));
    if (!tasks.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No batch tasks of this type.")));
    $("batches-page").textContent = pager.describe("tasks");
    $("batches-prev").disabled = !pager.hasPrevious();
    $("batches-next").disabled = !pager.hasNext();
  } catch (error) {
    if (current()) failed(error, "Listing batch tasks failed");
  }
}

const OUTCOMES = [
  ["success", "Success"], ["fail", "Fail"], ["stopped", "Stopped"], ["processing", "Processing"],
  ["waitting", "Waiting"], ["fail_wait_retry", "Failed, will retry"], ["removed", "Removed"],
];

function batchRow(task) {
  const progress = task.task_progress || {};
  const outcomes = el("ul", { class: "outcomes" }, OUTCOMES.filter(([key]) => progress[key]).map(([key, label]) =>
    el("li", { class: `outcome-${key}`, dataset: { outcome: key } }, `${label} `, el("b", {}, numberFormat.format(progress[key])))));
  return el("tr", { dataset: { taskId: task.task_id } },
    el("td", {}, el("span", { class: "name" }, task.task_name), el("br"), el("code", { class: "id" }, task.task_id)),
    el("td", {}, el("span", { class: `badge batch-${task.status}` }, task.status),
      task.status_desc ? el("p", { class: "desc" }, task.status_desc) : null),
    timeCell(task.create_time, batchTime),
    el("td", { class: "num", dataset: { total: String(progress.total || 0) } }, numberFormat.format(progress.total || 0)),
    el("td", {}, outcomes.children.length ? outcomes : "—"),
    el("td", { class: "actions" }, el("button", { type: "button", dataset: { action: "export", taskType: task.task_type },
      "aria-label": `Export the results of batch task ${task.task_name}` }, "Export…")));
}

async function onBatchAction(event) {
  const button = event.target.closest("button[data-action=export]");
  if (!button) return;
  const id = button.closest("tr").dataset.taskId;
  $("create-type").value = button.dataset.taskType;
  await loadPicker(id);
  $("create-task").focus();
  $("create-title").scrollIntoView({ block: "start" });
}

// -- start ------------------------------------------------------------------------------------------

function fillTypes(select) {
  select.replaceChildren(...BATCH_TASK_TYPES.map((t) => el("option", { value: t }, t)));
  select.value = DEFAULT_TASK_TYPE;
}

async function readCredentialsFile(event) {
  const file = event.target.files && event.target.files[0];
  if (!file) return;
  try {
    const doc = JSON.parse(await file.text());
    if (typeof doc.project_id !== "string" || typeof doc.token !== "string") throw new Error("no project_id and token");
    $("project-id").value = doc.project_id;
    $("token").value = doc.token;
    notice(`Project ID and token taken from ${file.name}.`);
  } catch (error) {
    showError(new Error(`${file.name} is not a credentials.json (${error.message}).`), "Sign in");
  } finally {
    event.target.value = "";
  }
}

function start() {
  fillTypes($("create-type"));
  fillTypes($("batches-type"));
  $("batches-status").append(...BATCH_STATUSES.map((s) => el("option", { value: s }, s)));
  $("sign-in-form").addEventListener("submit", signIn);
  $("credentials-file").addEventListener("change", readCredentialsFile);
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  $("exports-body").addEventListener("click", onExportAction);
  $("batches-body").addEventListener("click", onBatchAction);
  $("exports-refresh").addEventListener("click", loadExports);
  $("exports-limit").addEventListener("change", () => { state.exports = new Pager(Number($("exports-limit").value)); loadExports(); });
  $("exports-next").addEventListener("click", () => { state.exports.next(); loadExports(); });
  $("exports-prev").addEventListener("click", () => { state.exports.previous(); loadExports(); });
  $("exports-goto-button").addEventListener("click", () => {
    const n = Number($("exports-goto").value);
    if (state.exports.goTo(n)) loadExports();
    else showError(new Error(`Page ${$("exports-goto").value} cannot be reached by offset (at most ${LIST_OFFSET_MAX} records are skipped); use Older.`), "Go to page");
  });
  $("create-form").addEventListener("submit", createExport);
  $("create-type").addEventListener("change", () => loadPicker());
  $("create-reload").addEventListener("click", () => loadPicker($("create-task").value));
  for (const radio of document.querySelectorAll("input[name=app_type]")) {
    radio.addEventListener("change", () => { $("create-app-id").disabled = radio.value !== "APP" || !radio.checked; });
  }
  $("batches-refresh").addEventListener("click", loadBatches);
  for (const id of ["batches-type", "batches-status"]) {
    $(id).addEventListener("change", () => { state.batches.reset(); loadBatches(); });
  }
  $("batches-limit").addEventListener("change", () => { state.batches = new Pager(Number($("batches-limit").value)); loadBatches(); });
  $("batches-next").addEventListener("click", () => { state.batches.next(); loadBatches(); });
  $("batches-prev").addEventListener("click", () => { state.batches.previous(); loadBatches(); });
  const session = loadSession();
  if (session) enter(session);
  else $("project-id").focus();
}

start();
