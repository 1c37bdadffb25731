// Calls to the service's JSON API: the key on every call, the error envelope turned into an ApiError,
// chat replies read as Server-Sent Events, uploads through XMLHttpRequest (fetch reports no upload progress).

/** A failed call: the envelope's code and message, the HTTP status, and Retry-After when the server sent one. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  /** The message as a person should read it: the server's words, with the wait when there is one. */
  describe() {
    let text = this.message;
    if (this.retryAfter !== null && !/retry|resets in/i.test(text)) {
      text += ` (retry in ${this.retryAfter} s)`;
    }
    if (this.status === 503 && this.code === "OVERLOADED" && this.retryAfter === null) {
      text += " (the server is busy; try again shortly)";
    }
    return text;
  }
}

function retryAfterOf(headerValue) {
  const seconds = Number.parseInt(headerValue ?? "", 10);
  return Number.isFinite(seconds) ? seconds : null;
}

async function errorFrom(response) {
  const retryAfter = retryAfterOf(response.headers.get("Retry-After"));
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.message === "string") {
      return new ApiError(response.status, body.error.code ?? "ERROR", body.error.message, retryAfter);
    }
  } catch {
    // Not the envelope (a proxy's page, say): fall through to the status line.
  }
  return new ApiError(response.status, "HTTP_" + response.status, `${response.status} ${response.statusText}`, retryAfter);
}

function unreachable(error) {
  return new ApiError(0, "NETWORK", `The server could not be reached (${error.message}).`);
}

/** One SSE event parsed from its lines: {event, data}. */
function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  return { event, data: data.join("\n") };
}

export class Client {
  /** `credential` is an API key or a JWT: the service takes either as a bearer credential. */
  constructor(credential) {
    this.credential = credential;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.credential}`, ...extra };
  }

  async request(method, path, body = undefined) {
    const init = { method, headers: this.headers(), cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw unreachable(error);
    }
    if (!response.ok) throw await errorFrom(response);
    return response.json();
  }

  get(path) {
    return this.request("GET", path);
  }

  post(path, body) {
    return this.request("POST", path, body);
  }

  delete(path) {
    return this.request("DELETE", path);
  }

  /**
   * Sends a chat message with `"stream": true` and calls `onDelta(text)` per text delta; resolves with the
   * stored reply. Aborting `signal` closes the connection, and the server cancels the generation.
   */
  async streamMessage(sessionId, body, { signal, onDelta }) {
    let response;
    try {
      response = await fetch(`chat/${encodeURIComponent(sessionId)}/messages`, {
        method: "POST",
        headers: this.headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify({ ...body, stream: true }),
        signal,
        cache: "no-store",
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw unreachable(error);
    }
    if (!response.ok) throw await errorFrom(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let reply = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const { event, data } = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (!data) continue;
        const payload = JSON.parse(data);
        if (event === "error") {
          const error = payload.error ?? {};
          throw new ApiError(200, error.code ?? "ERROR", error.message ?? "The generation failed.");
        }
        if (typeof payload.delta === "string") onDelta(payload.delta);
        else reply = payload;
      }
    }
    if (reply === null) throw new ApiError(0, "INCOMPLETE", "The reply stream ended before the reply was complete.");
    return reply;
  }

  /** Uploads one file as multipart field `file`, reporting `onProgress(sentBytes, totalBytes)` as it goes. */
  upload(file, { onProgress, onSent }) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "upload");
      xhr.setRequestHeader("Authorization", `Bearer ${this.credential}`);
      xhr.responseType = "json";
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) onProgress(event.loaded, event.total);
      });
      // Every byte is sent: the server now parses, chunks and embeds the document.
      xhr.upload.addEventListener("load", () => onSent());
      xhr.addEventListener("load", () => {
        const body = xhr.response;
        if (xhr.status >= 200 && xhr.status < 300) {
          resolve(body);
          return;
        }
        const retryAfter = retryAfterOf(xhr.getResponseHeader("Retry-After"));
        if (body && body.error) {
          reject(new ApiError(xhr.status, body.error.code, body.error.message, retryAfter));
        } else {
          reject(new ApiError(xhr.status, "HTTP_" + xhr.status, `${xhr.status} ${xhr.statusText}`, retryAfter));
        }
      });
      // A body over the server's cap is refused before it is read, and the connection closes under the upload.
      xhr.addEventListener("error", () =>
        reject(
          new ApiError(0, "NETWORK", "The upload did not complete: the connection closed (a file over the server's upload size limit is refused this way)."),
        ),
      );
      const form = new FormData();
      form.append("file", file, file.name);
      xhr.send(form);
    });
  }
}
