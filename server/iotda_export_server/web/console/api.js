// The platform's REST API as the console calls it: X-Auth-Token (never a URL), the project in the
// path, the platform's error body turned into an ApiError that keeps the code and the request id.

export class ApiError extends Error {
  constructor({ status = 0, errorCode = "", message = "", requestId = "", retryAfter = 0 }) {
    super(message || (status ? `HTTP ${status}` : "The server could not be reached."));
    this.name = "ApiError";
    this.status = status;
    this.errorCode = errorCode;
    this.requestId = requestId;
    this.retryAfter = retryAfter;
  }

  // A refusal that may pass if asked again (the server unreachable, busy or stopping).
  get transient() {
    return this.status === 0 || this.status === 408 || this.status === 499 || this.status >= 500;
  }
}

async function errorOf(response) {
  let doc = null;
  try {
    doc = await response.json();
  } catch {
    doc = null;
  }
  const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return new ApiError({
    status: response.status,
    errorCode: (doc && doc.error_code) || "",
    message: (doc && (doc.error_msg || doc.message)) || `HTTP ${response.status} ${response.statusText}`.trim(),
    requestId: response.headers.get("X-Request-Id") || "",
    retryAfter: Number.isFinite(retry) ? retry : 0,
  });
}

function unreachable(error) {
  if (error && error.name === "AbortError") throw error;
  return new ApiError({ status: 0, message: "The server could not be reached." });
}

export class Api {
  constructor(session) {
    this.session = session;
  }

  url(rest, query) {
    const path = `/v5/iot/${encodeURIComponent(this.session.projectId)}${rest}`;
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query || {})) {
      if (value !== undefined && value !== null && value !== "") params.set(key, String(value));
    }
    const text = params.toString();
    return text ? `${path}?${text}` : path;
  }

  headers(extra) {
    const headers = { "X-Auth-Token": this.session.token, Accept: "application/json", ...extra };
    if (this.session.instanceId) headers["Instance-Id"] = this.session.instanceId;
    return headers;
  }

  async send(method, rest, { query, body, signal, accept } = {}) {
    const init = {
      method,
      headers: this.headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
      referrerPolicy: "no-referrer",
    };
    if (accept) init.headers.Accept = accept;
    let response;
    try {
      response = await fetch(this.url(rest, query), init);
    } catch (error) {
      throw unreachable(error);
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  // A JSON call: {status, requestId, data} (data null for a 204).
  async call(method, rest, options) {
    const response = await this.send(method, rest, options);
    const requestId = response.headers.get("X-Request-Id") || "";
    if (response.status === 204) return { status: 204, requestId, data: null };
    return { status: response.status, requestId, data: await response.json() };
  }

  listExportTasks(query) {
    return this.call("GET", "/export-tasks", { query });
  }

  createExportTask(body) {
    return this.call("POST", "/export-tasks", { body });
  }

  cancelExportTask(id) {
    return this.call("POST", `/export-tasks/${encodeURIComponent(id)}/cancel`, { body: {} });
  }

  deleteExportTask(id) {
    return this.call("DELETE", `/export-tasks/${encodeURIComponent(id)}`);
  }

  listBatchTasks(query) {
    return this.call("GET", "/batchtasks", { query });
  }

  // The result file: {blob, fileName, requestId}.
  async download(id) {
    const response = await this.send("GET", `/export-tasks/${encodeURIComponent(id)}/file`, {
      accept: "application/zip, application/json",
    });
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename="([^"]+)"/.exec(disposition);
    let blob;
    try {
      blob = await response.blob();
    } catch (error) {
      throw new ApiError({ status: 0, message: "The download was cut off before the end; try again." });
    }
    const expected = Number.parseInt(response.headers.get("Content-Length") || "", 10);
    if (Number.isFinite(expected) && blob.size !== expected) {
      throw new ApiError({ status: 0, message: "The download was cut off before the end; try again." });
    }
    return { blob, fileName: match ? match[1] : `export-${id}.zip`, requestId: response.headers.get("X-Request-Id") || "" };
  }

  // The progress stream (WatchProgress through the gateway): the open response.
  openProgress(id, signal) {
    return this.send("GET", `/export-tasks/${encodeURIComponent(id)}/progress`, { signal });
  }
}

// The objects of a newline-delimited JSON body, as they arrive.
export async function* ndjson(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (line) yield JSON.parse(line);
      }
    }
    if (buffer.trim()) yield JSON.parse(buffer);
  } finally {
    reader.releaseLock();
  }
}
