// Building the page from data: every value becomes DOM text (text nodes, textContent), never
// HTML. Characters that could hide or disguise text (controls, bidi overrides, invisible
// characters) are shown as visible escapes.

const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u115f\u1160\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\ufff0-\ufffb]/gu;

/** `text` with every unsafe character as a visible `\u{…}` escape, and whether it had any. */
export function visible(text) {
  const value = String(text ?? '');
  let changed = false;
  const shown = value.replace(UNSAFE, (c) => {
    changed = true;
    return `\\u{${c.codePointAt(0).toString(16).padStart(4, '0')}}`;
  });
  return { shown, changed };
}

/** A text node of `text`, unsafe characters escaped; a marked span when it had any. */
export function text(value) {
  const { shown, changed } = visible(value);
  if (!changed) return document.createTextNode(shown);
  const span = document.createElement('span');
  span.className = 'escape';
  span.title = 'contains control, invisible or bidi characters, shown escaped';
  span.textContent = shown;
  return span;
}

/** An element with attributes and children (strings become escaped text). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, String(value));
  }
  append(node, children);
  return node;
}

/** An SVG element. */
export function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : text(child));
  }
}

/** Replaces the children of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
}

/** Shows a message in the header. */
export function notice(message) {
  document.getElementById('notice').textContent = message ?? '';
}

/** Base64 (as proto3 JSON writes bytes) to hex. */
export function base64ToHex(value) {
  if (!value) return '';
  return [...base64ToBytes(value)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** Base64 to bytes. */
export function base64ToBytes(value) {
  const binary = atob(value.replace(/-/g, '+').replace(/_/g, '/'));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/** Hex to bytes. */
export function hexToBytes(hex) {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.substr(i * 2, 2), 16);
  return bytes;
}
