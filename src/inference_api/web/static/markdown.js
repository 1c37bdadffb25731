// A small Markdown renderer for model replies that builds DOM nodes and sets only textContent: whatever HTML a
// model writes shows as text and never runs. It covers what chat replies use: paragraphs, headings, lists,
// quotes, rules, fenced and inline code, emphasis, http(s) links, and [n] markers that cite a source.
// A reply still streaming may end inside a fence: the open fence renders as code up to the end.

const INLINE =
  /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__|\*(?=[^\s*])([^*]*?[^\s*])\*|\[([^\]\n]+)\]\((https?:\/\/[^\s()]+)\)|\[(\d{1,2})\]/g;

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

/** Appends `text` to `parent` with inline formatting; `cite(n)` makes the node for a [n] marker, or null. */
function renderInline(text, parent, cite) {
  let last = 0;
  INLINE.lastIndex = 0;
  for (let match = INLINE.exec(text); match !== null; match = INLINE.exec(text)) {
    const [whole, , code, strong, strong2, em, linkText, href, citation] = match;
    let node = null;
    if (code !== undefined) {
      node = el("code");
      node.textContent = code.trim() || code;
    } else if (strong !== undefined || strong2 !== undefined) {
      node = el("strong");
      renderInline(strong ?? strong2, node, cite);
    } else if (em !== undefined) {
      node = el("em");
      renderInline(em, node, cite);
    } else if (linkText !== undefined) {
      node = el("a");
      node.href = href; // only http(s): the pattern admits no other scheme
      node.rel = "noopener noreferrer";
      node.target = "_blank";
      node.textContent = linkText;
    } else if (citation !== undefined) {
      node = cite ? cite(Number(citation)) : null;
    }
    if (node === null) continue; // a [n] with no such source stays text
    parent.append(text.slice(last, match.index), node);
    last = match.index + whole.length;
  }
  parent.append(text.slice(last));
}

function withBreaks(lines, parent, cite) {
  lines.forEach((line, i) => {
    if (i > 0) parent.append(el("br"));
    renderInline(line, parent, cite);
  });
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;

function codeBlock(lines, language, open) {
  const figure = el("div", "code-block");
  const bar = el("div", "code-bar");
  const label = el("span");
  label.textContent = language || "code";
  const copy = el("button", "copy-button");
  copy.type = "button";
  copy.textContent = "Copy";
  const text = lines.join("\n");
  copy.addEventListener("click", () => {
    navigator.clipboard?.writeText(text).then(
      () => (copy.textContent = "Copied"),
      () => (copy.textContent = "Copy failed"),
    );
  });
  bar.append(label, copy);
  const pre = el("pre");
  const code = el("code");
  if (language) code.dataset.language = language;
  code.textContent = text;
  pre.append(code);
  if (open) figure.classList.add("open");
  figure.append(bar, pre);
  return figure;
}

/**
 * Renders `source` into a fresh DocumentFragment. `cite(n)` returns a node for the marker [n] (or null to keep
 * it as text).
 */
export function renderMarkdown(source, cite = null) {
  const out = document.createDocumentFragment();
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(marker)) body.push(lines[i++]);
      const closed = i < lines.length;
      i += 1;
      out.append(codeBlock(body, fence[2], !closed));
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      // Reply headings sit inside the page's own: h3 at the largest.
      const node = el(`h${Math.min(6, heading[1].length + 2)}`);
      renderInline(heading[2], node, cite);
      out.append(node);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      out.append(el("hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(QUOTE.exec(lines[i++])[1]);
      const node = el("blockquote");
      node.append(renderMarkdown(quoted.join("\n"), cite));
      out.append(node);
      continue;
    }
    if (BULLET.test(line) || NUMBERED.test(line)) {
      const numbered = NUMBERED.test(line) && !BULLET.test(line);
      const pattern = numbered ? NUMBERED : BULLET;
      const list = el(numbered ? "ol" : "ul");
      if (numbered) {
        const start = Number(NUMBERED.exec(line)[1]);
        if (start !== 1) list.start = start;
      }
      let item = null;
      while (i < lines.length && lines[i].trim()) {
        const match = pattern.exec(lines[i]);
        if (match) {
          item = el("li");
          renderInline(numbered ? match[2] : match[1], item, cite);
          list.append(item);
        } else if (item !== null && /^\s+/.test(lines[i])) {
          item.append(el("br"));
          renderInline(lines[i].trim(), item, cite);
        } else {
          break;
        }
        i += 1;
      }
      out.append(list);
      continue;
    }
    const paragraph = [];
    while (
      i < lines.length &&
      lines[i].trim() &&
      !FENCE.test(lines[i]) &&
      !HEADING.test(lines[i]) &&
      !QUOTE.test(lines[i]) &&
      !(paragraph.length > 0 && (BULLET.test(lines[i]) || NUMBERED.test(lines[i])))
    ) {
      paragraph.push(lines[i++]);
    }
    const node = el("p");
    withBreaks(paragraph, node, cite);
    out.append(node);
  }
  return out;
}
