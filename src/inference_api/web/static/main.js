// The chat page: sign-in, sessions, streamed replies with Stop, documents, citations and usage.
// Every node that shows text from the server or the model gets it through textContent (see markdown.js).

import { ApiError, Client } from "./api.js";
import { renderMarkdown } from "./markdown.js";

const KEY_STORAGE = "inference-api.credential"; // sessionStorage: gone when the tab closes, never in a URL or cookie
const TITLE_STORAGE = "inference-api.titles"; // sessionStorage: the API keeps no session titles
const THEME_STORAGE = "inference-api.theme"; // localStorage: a display preference, nothing secret
const THEMES = ["auto", "light", "dark"];

const $ = (id) => document.getElementById(id);

function el(tag, options = {}, ...children) {
  const node = document.createElement(tag);
  const { className, text, attrs, on } = options;
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attrs ?? {})) node.setAttribute(name, value);
  for (const [name, handler] of Object.entries(on ?? {})) node.addEventListener(name, handler);
  node.append(...children);
  return node;
}

function when(seconds) {
  const date = new Date(seconds * 1000);
  const today = new Date();
  return date.toDateString() === today.toDateString()
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString([], { month: "short", day: "numeric" });
}

function bytes(size) {
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KB`;
  return `${(size / 1024 / 1024).toFixed(1)} MB`;
}

function describe(error) {
  if (error instanceof ApiError) return error.describe();
  return `Something went wrong in the page: ${error.message}`;
}

class ChatPage {
  constructor() {
    this.client = null;
    this.models = [];
    this.session = null; // the open SessionView, or null while starting a new chat
    this.streaming = null; // {controller} while a reply streams
    this.titles = new Map(JSON.parse(sessionStorage.getItem(TITLE_STORAGE) ?? "[]"));
    this.toastTimer = 0;
  }

  // ---- start-up and sign-in -------------------------------------------------------------------------------

  start() {
    this.applyTheme(localStorage.getItem(THEME_STORAGE) ?? "auto");
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.signIn($("key-input").value.trim());
    });
    $("signout-button").addEventListener("click", () => this.signOut());
    $("theme-button").addEventListener("click", () => this.cycleTheme());
    $("menu-button").addEventListener("click", () => this.toggleMenu());
    $("scrim").addEventListener("click", () => this.toggleMenu(false));
    $("new-chat-button").addEventListener("click", () => this.newChat());
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    $("composer-input").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      }
    });
    $("stop-button").addEventListener("click", () => this.stop());
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.streaming) this.stop();
      if (event.key === "Escape" && document.body.classList.contains("menu-open")) this.toggleMenu(false);
    });
    $("toast-close").addEventListener("click", () => this.hideToast());
    $("citation-close").addEventListener("click", () => $("citation-dialog").close());
    this.setUpUploads();

    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) this.signIn(saved);
    else this.showLogin();
  }

  showLogin(message = null) {
    $("app-view").hidden = true;
    $("login-view").hidden = false;
    $("login-error").hidden = message === null;
    $("login-error").textContent = message ?? "";
    $("key-input").focus();
  }

  async signIn(credential) {
    if (!credential) {
      this.showLogin("Enter an API key or a token.");
      return;
    }
    $("login-button").disabled = true;
    const client = new Client(credential);
    try {
      const usage = await client.get("usage"); // any valid key or token may read its own usage
      this.client = client;
      sessionStorage.setItem(KEY_STORAGE, credential);
      $("key-input").value = "";
      $("login-view").hidden = true;
      $("app-view").hidden = false;
      $("who").textContent = `Signed in as ${usage.key}`;
      this.showUsage(usage);
      this.newChat();
      await Promise.all([this.loadModels(), this.loadSessions(), this.loadDocuments()]);
    } catch (error) {
      sessionStorage.removeItem(KEY_STORAGE);
      this.showLogin(describe(error));
    } finally {
      $("login-button").disabled = false;
    }
  }

  signOut() {
    this.stop();
    sessionStorage.removeItem(KEY_STORAGE);
    this.client = null;
    this.session = null;
    $("session-list").replaceChildren();
    $("document-list").replaceChildren();
    $("messages").replaceChildren();
    this.showLogin();
  }

  // ---- theme, menu, messages to the user --------------------------------------------------------------------

  applyTheme(theme) {
    const chosen = THEMES.includes(theme) ? theme : "auto";
    if (chosen === "auto") delete document.documentElement.dataset.theme;
    else document.documentElement.dataset.theme = chosen;
    $("theme-button").setAttribute("aria-label", `Theme: ${chosen} (change)`);
    $("theme-button").title = `Theme: ${chosen}`;
    $("theme-button").textContent = { auto: "◐", light: "☀", dark: "☾" }[chosen];
    return chosen;
  }

  cycleTheme() {
    const current = document.documentElement.dataset.theme ?? "auto";
    const next = THEMES[(THEMES.indexOf(current) + 1) % THEMES.length];
    localStorage.setItem(THEME_STORAGE, this.applyTheme(next));
  }

  toggleMenu(open = !document.body.classList.contains("menu-open")) {
    document.body.classList.toggle("menu-open", open);
    $("menu-button").setAttribute("aria-expanded", String(open));
    $("scrim").hidden = !open;
    if (open) $("new-chat-button").focus();
  }

  closeMenuOnPhone() {
    if (document.body.classList.contains("menu-open")) this.toggleMenu(false);
  }

  toast(message) {
    $("toast-text").textContent = message;
    $("toast").hidden = false;
    clearTimeout(this.toastTimer);
    this.toastTimer = setTimeout(() => this.hideToast(), 15000);
  }

  hideToast() {
    $("toast").hidden = true;
  }

  fail(error) {
    if (error instanceof ApiError && error.status === 401) {
      // The key was revoked or the token expired: ask again rather than fail every call.
      this.signOut();
      this.showLogin(describe(error));
      return;
    }
    this.toast(describe(error));
  }

  // ---- usage ------------------------------------------------------------------------------------------------

  async refreshUsage() {
    try {
      this.showUsage(await this.client.get("usage"));
    } catch (error) {
      this.fail(error);
    }
  }

  showUsage(usage) {
    const rows = [];
    for (const [label, window] of [
      ["Tokens this minute", usage.tokens.minute],
      ["Tokens today", usage.tokens.day],
    ]) {
      const used = window.used + window.reserved;
      const value = window.limit === null ? `${used} (no quota)` : `${used} of ${window.limit}`;
      rows.push([label, value, window.limit === null ? null : used / window.limit]);
    }
    for (const limit of usage.requests) {
      rows.push([
        `Requests (${limit.applies_to})`,
        `${limit.remaining} left of ${limit.limit}, resets in ${limit.resets_in} s`,
        null,
      ]);
    }
    $("usage").replaceChildren(
      ...rows.flatMap(([label, value, share]) => {
        const dd = el("dd", { text: value });
        if (share !== null) {
          const meter = el("meter", { attrs: { min: "0", max: "1", low: "0.7", high: "0.9", optimum: "0" } });
          meter.value = Math.min(1, share);
          dd.append(meter);
        }
        return [el("dt", { text: label }), dd];
      }),
    );
  }

  // ---- models -----------------------------------------------------------------------------------------------

  async loadModels() {
    try {
      const { models } = await this.client.get("models");
      this.models = models;
      const select = $("model-select");
      select.replaceChildren();
      for (const model of models) {
        for (const version of model.versions) {
          const label = version === "base" ? model.base_model : `${model.base_model} · ${version}`;
          const option = el("option", { text: label });
          option.value = JSON.stringify([model.base_model, version]);
          option.title = model.description ?? "";
          select.append(option);
        }
      }
    } catch (error) {
      this.fail(error);
    }
  }

  // ---- sessions ---------------------------------------------------------------------------------------------

  rememberTitle(sessionId, text) {
    if (this.titles.has(sessionId) || !text) return;
    this.titles.set(sessionId, text.slice(0, 80));
    sessionStorage.setItem(TITLE_STORAGE, JSON.stringify([...this.titles]));
  }

  async loadSessions() {
    let sessions;
    try {
      ({ sessions } = await this.client.get("chat"));
    } catch (error) {
      this.fail(error);
      return;
    }
    const list = $("session-list");
    list.replaceChildren(
      ...sessions.map((item) => {
        const id = item.sessionId;
        const title = this.titles.get(id) ?? `Chat from ${when(item.created_at)}`;
        const current = this.session?.sessionId === id;
        const open = el(
          "button",
          { className: "session-open", attrs: { type: "button" }, on: { click: () => this.openSession(id) } },
          el("span", { className: "session-title ellipsis", text: title }),
          el("span", {
            className: "muted small",
            text: `${item.message_count} message${item.message_count === 1 ? "" : "s"} · ${when(item.updated_at)}`,
          }),
        );
        if (current) open.setAttribute("aria-current", "true");
        const remove = el("button", {
          className: "icon-button delete-session",
          text: "✕",
          attrs: { type: "button", "aria-label": `Delete chat: ${title}`, title: "Delete chat" },
          on: { click: () => this.deleteSession(id, title) },
        });
        return el("li", { className: current ? "current" : "", attrs: { "data-session-id": id } }, open, remove);
      }),
    );
    $("sessions-empty").hidden = sessions.length > 0;
  }

  newChat() {
    this.stop();
    this.session = null;
    $("chat-title").textContent = "New chat";
    $("chat-model").hidden = true;
    $("system-note").hidden = true;
    $("new-chat-form").hidden = false;
    $("messages").replaceChildren();
    this.markCurrent();
    this.closeMenuOnPhone();
    $("composer-input").focus();
  }

  async openSession(sessionId) {
    this.stop();
    try {
      this.showSession(await this.client.get(`chat/${encodeURIComponent(sessionId)}`));
    } catch (error) {
      this.fail(error);
      return;
    }
    this.closeMenuOnPhone();
    this.markCurrent();
    $("composer-input").focus();
  }

  markCurrent() {
    for (const item of $("session-list").children) {
      const current = item.dataset.sessionId === this.session?.sessionId;
      item.classList.toggle("current", current);
      const button = item.querySelector(".session-open");
      if (current) button?.setAttribute("aria-current", "true");
      else button?.removeAttribute("aria-current");
    }
  }

  showSession(view) {
    this.session = view;
    const firstUser = view.messages.find((m) => m.role === "user");
    if (firstUser) this.rememberTitle(view.sessionId, firstUser.content);
    $("chat-title").textContent = this.titles.get(view.sessionId) ?? "Chat";
    const model = view.base_model ?? this.models[0]?.base_model ?? "default model";
    $("chat-model").textContent =
      view.adapter_version && view.adapter_version !== "base" ? `${model} · ${view.adapter_version}` : model;
    $("chat-model").hidden = false;
    $("new-chat-form").hidden = true;
    $("system-note").hidden = !view.system_prompt;
    $("system-text").textContent = view.system_prompt ?? "";
    const notes = view.summarized_turns
      ? [el("li", { className: "note", text: `${view.summarized_turns} earlier messages are summarized.` })]
      : [];
    $("messages").replaceChildren(...notes, ...view.messages.map((message, index) => this.messageNode(message, index)));
    this.scrollToEnd();
  }

  async deleteSession(sessionId, title) {
    if (!window.confirm(`Delete the chat "${title}"? This cannot be undone.`)) return;
    try {
      await this.client.delete(`chat/${encodeURIComponent(sessionId)}`);
    } catch (error) {
      this.fail(error);
      return;
    }
    if (this.session?.sessionId === sessionId) this.newChat();
    await this.loadSessions();
    $("new-chat-button").focus();
  }

  async branch(index) {
    if (!this.session) return;
    try {
      const view = await this.client.post(`chat/${encodeURIComponent(this.session.sessionId)}/branch`, {
        at_message: index + 1,
      });
      const title = this.titles.get(this.session.sessionId);
      if (title) this.rememberTitle(view.sessionId, `${title} (branch)`);
      this.showSession(view);
      await this.loadSessions();
      this.toast(`Branched: a new chat with the first ${index + 1} messages.`);
      $("composer-input").focus();
    } catch (error) {
      this.fail(error);
    }
  }

  // ---- messages ---------------------------------------------------------------------------------------------

  messageNode(message, index) {
    const item = el("li", { className: `message ${message.role}`, attrs: { "data-role": message.role } });
    const body = el("div", { className: "bubble" });
    item.append(el("div", { className: "role", text: message.role === "user" ? "You" : "Assistant" }), body);
    this.fillMessage(item, message, index);
    return item;
  }

  /** (Re)draws a message's text, citations and actions; `index` is its place in the session, or null. */
  fillMessage(item, message, index) {
    const body = item.querySelector(".bubble");
    const sources = message.sources ?? [];
    if (message.role === "assistant") {
      body.replaceChildren(renderMarkdown(message.content, (n) => this.citationButton(sources, n, true)));
    } else {
      body.replaceChildren(el("p", { className: "plain", text: message.content }));
    }
    item.querySelector(".sources")?.remove();
    item.querySelector(".actions")?.remove();
    if (sources.length > 0) {
      item.append(
        el(
          "div",
          { className: "sources", attrs: { role: "group", "aria-label": "Sources" } },
          el("span", { className: "muted small", text: "Sources:" }),
          ...sources.map((_, i) => this.citationButton(sources, i + 1, false)),
        ),
      );
    }
    if (index !== null) {
      const actions = el("div", { className: "actions" });
      if (message.usage) {
        const usage = message.usage;
        actions.append(
          el("span", {
            className: "muted small",
            text: `${usage.tokens_generated} tokens · ${usage.response_time.toFixed(1)} s · ${usage.finish_reason}`,
          }),
        );
      }
      actions.append(
        el("button", {
          className: "ghost small branch-button",
          text: "Branch from here",
          attrs: { type: "button", title: `A new chat holding the first ${index + 1} messages` },
          on: { click: () => this.branch(index) },
        }),
      );
      item.append(actions);
    }
  }

  citationButton(sources, n, inline) {
    const source = sources[n - 1];
    if (!source) return null;
    const label = inline ? `[${n}]` : `[${n}] ${source.filename}`;
    return el("button", {
      className: inline ? "citation inline" : "citation",
      text: label,
      attrs: { type: "button", "aria-label": `Source ${n}: ${source.filename}, excerpt`, "aria-haspopup": "dialog" },
      on: { click: () => this.showCitation(source, n) },
    });
  }

  showCitation(source, n) {
    $("citation-title").textContent = `[${n}] ${source.filename}`;
    const where = [`part ${source.chunk_index + 1}`];
    if (typeof source.score === "number") where.push(`relevance ${source.score.toFixed(2)}`);
    $("citation-meta").textContent = where.join(" · ");
    $("citation-excerpt").textContent = source.excerpt ?? "";
    $("citation-dialog").showModal();
  }

  scrollToEnd() {
    const messages = $("messages");
    messages.lastElementChild?.scrollIntoView({ block: "end" });
  }

  setStreaming(streaming) {
    $("send-button").hidden = streaming;
    $("stop-button").hidden = !streaming;
    $("composer").classList.toggle("busy", streaming);
  }

  async send() {
    const input = $("composer-input");
    const text = input.value.trim();
    if (!text || this.streaming || !this.client) return;
    const maxTokens = Number.parseInt($("max-tokens").value, 10);
    const body = { message: text, use_documents: $("use-documents").checked };
    if (Number.isFinite(maxTokens) && maxTokens > 0) body.max_new_tokens = maxTokens;

    const controller = new AbortController();
    this.streaming = { controller };
    this.setStreaming(true);
    try {
      if (!this.session) {
        const [baseModel, version] = JSON.parse($("model-select").value || "[null, null]");
        const start = { base_model: baseModel, adapter_version: version };
        const system = $("system-prompt").value.trim();
        if (system) start.system_prompt = system;
        const started = await this.client.post("chat/start", start);
        this.rememberTitle(started.sessionId, text);
        this.showSession(await this.client.get(`chat/${encodeURIComponent(started.sessionId)}`));
        $("system-prompt").value = "";
        this.loadSessions();
      }
    } catch (error) {
      this.streaming = null;
      this.setStreaming(false);
      this.fail(error);
      return;
    }
    input.value = "";
    const session = this.session;
    const base = session.messages.length;
    const user = this.messageNode({ role: "user", content: text }, null);
    const reply = this.messageNode({ role: "assistant", content: "" }, null);
    reply.classList.add("streaming");
    reply.setAttribute("aria-busy", "true");
    $("messages").append(user, reply);
    this.scrollToEnd();

    let content = "";
    let frame = 0;
    const draw = () => {
      frame = 0;
      this.fillMessage(reply, { role: "assistant", content }, null);
      this.scrollToEnd();
    };
    // The last delta's redraw must not land after the stored reply was drawn: it would wipe its sources and actions.
    const settle = () => {
      cancelAnimationFrame(frame);
      frame = 0;
    };
    try {
      const stored = await this.client.streamMessage(session.sessionId, body, {
        signal: controller.signal,
        onDelta: (delta) => {
          content += delta;
          if (!frame) frame = requestAnimationFrame(draw); // one redraw a frame, however fast the tokens come
        },
      });
      settle();
      const message = { ...stored.message, sources: stored.message.sources ?? stored.sources };
      session.messages.push({ role: "user", content: text, timestamp: Date.now() / 1000 }, message);
      this.fillMessage(user, session.messages[base], base);
      this.fillMessage(reply, message, base + 1);
    } catch (error) {
      settle();
      if (error.name === "AbortError") {
        draw();
        reply.classList.add("stopped");
        reply.append(el("p", { className: "muted small", text: "Stopped. This turn was not saved." }));
      } else {
        draw();
        reply.classList.add("failed");
        reply.append(el("p", { className: "error-text", text: describe(error) }));
        this.fail(error);
      }
    } finally {
      reply.classList.remove("streaming");
      reply.removeAttribute("aria-busy");
      this.streaming = null;
      this.setStreaming(false);
      this.scrollToEnd();
      this.loadSessions();
      this.refreshUsage();
    }
  }

  stop() {
    // Aborting the fetch closes the connection; the server cancels the generation when it sees that.
    this.streaming?.controller.abort();
  }

  // ---- documents --------------------------------------------------------------------------------------------

  setUpUploads() {
    const zone = $("drop-zone");
    $("file-input").addEventListener("change", (event) => {
      this.uploadAll([...event.target.files]);
      event.target.value = "";
    });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      this.uploadAll([...(event.dataTransfer?.files ?? [])]);
    });
  }

  async uploadAll(files) {
    for (const file of files) {
      await this.upload(file);
    }
  }

  async upload(file) {
    const status = $("upload-status");
    const progress = $("upload-progress");
    const percent = $("upload-percent");
    $("upload-name").textContent = file.name;
    status.hidden = false;
    status.classList.remove("processing");
    progress.value = 0;
    percent.textContent = "0%";
    try {
      const result = await this.client.upload(file, {
        onProgress: (sent, total) => {
          const value = total ? Math.round((sent / total) * 100) : 0;
          progress.value = value;
          percent.textContent = `${value}%`;
        },
        onSent: () => {
          progress.value = 100;
          percent.textContent = "Processing…";
          status.classList.add("processing");
        },
      });
      const note = result.duplicate ? "already uploaded" : `${result.chunks} part${result.chunks === 1 ? "" : "s"}`;
      this.toast(`Uploaded ${result.filename} (${note}).`);
      await this.loadDocuments();
    } catch (error) {
      this.fail(error);
    } finally {
      status.hidden = true;
      status.classList.remove("processing");
    }
  }

  async loadDocuments() {
    let documents;
    try {
      ({ documents } = await this.client.get("documents"));
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) {
        $("documents-empty").hidden = false;
        $("documents-empty").textContent = describe(error);
        return;
      }
      this.fail(error);
      return;
    }
    $("document-list").replaceChildren(
      ...documents.map((doc) =>
        el(
          "li",
          { attrs: { "data-document-id": doc.document_id } },
          el(
            "div",
            { className: "document-text" },
            el("span", { className: "ellipsis", text: doc.filename, attrs: { title: doc.filename } }),
            el("span", { className: "muted small", text: `${bytes(doc.size_bytes)} · ${doc.chunks} part${doc.chunks === 1 ? "" : "s"}` }),
          ),
          el("button", {
            className: "icon-button",
            text: "✕",
            attrs: { type: "button", "aria-label": `Delete document ${doc.filename}`, title: "Delete document" },
            on: { click: () => this.deleteDocument(doc) },
          }),
        ),
      ),
    );
    $("documents-empty").hidden = documents.length > 0;
    $("documents-empty").textContent = "No documents yet.";
  }

  async deleteDocument(doc) {
    if (!window.confirm(`Delete the document "${doc.filename}"?`)) return;
    try {
      await this.client.delete(`documents/${encodeURIComponent(doc.document_id)}`);
    } catch (error) {
      this.fail(error);
    }
    await this.loadDocuments();
  }
}

new ChatPage().start();
