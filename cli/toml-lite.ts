// A small, tolerant reader for the part of TOML that Kata's configuration.toml uses: [tables],
// key = value with strings ("basic" with escapes, 'literal'), booleans, numbers and arrays of
// those (arrays may span lines), and # comments. It never throws: a line it cannot read is
// skipped and counted, so `vmplug doctor` still reports the keys it could read. Not a TOML
// validator: no inline tables, multi-line strings or dates (Kata's file has none of the keys we
// read in those forms).

export type TomlValue = string | number | boolean | TomlValue[];

export interface TomlDoc {
  /** `table` ('' for the top level) -> key -> value; later duplicates win, as the last read. */
  tables: Map<string, Map<string, TomlValue>>;
  /** Lines that were neither blank, a comment, a table header nor a readable key = value. */
  skipped: number;
}

export function parseTomlLite(text: string): TomlDoc {
  const tables = new Map<string, Map<string, TomlValue>>([['', new Map()]]);
  let current = tables.get('') as Map<string, TomlValue>;
  let skipped = 0;
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = stripComment(lines[i] ?? '').trim();
    if (line === '') continue;
    const header = /^\[\s*([A-Za-z0-9_.\-" ]+?)\s*\]$/.exec(line);
    if (header?.[1] !== undefined) {
      const name = header[1]
        .split('.')
        .map((p) => p.trim().replace(/^"(.*)"$/, '$1'))
        .join('.');
      current = tables.get(name) ?? new Map();
      tables.set(name, current);
      continue;
    }
    const kv = /^([A-Za-z0-9_-]+)\s*=\s*(.*)$/.exec(line);
    if (kv?.[1] === undefined || kv[2] === undefined) {
      skipped++;
      continue;
    }
    let raw = kv[2];
    // An array continues on the next lines until its brackets balance.
    while (raw.startsWith('[') && !bracketsBalance(raw) && i + 1 < lines.length) {
      i++;
      raw += ` ${stripComment(lines[i] ?? '').trim()}`;
    }
    const parsed = parseValue(raw.trim());
    if (parsed === undefined || parsed.rest.trim() !== '') {
      skipped++;
      continue;
    }
    current.set(kv[1], parsed.value);
  }
  return { tables, skipped };
}

/** The value at `table.key`, or undefined. */
export function tomlGet(doc: TomlDoc, table: string, key: string): TomlValue | undefined {
  return doc.tables.get(table)?.get(key);
}

/**
 * Calls `visit` with each character outside strings (and its index) until it returns true;
 * returns that index, or -1.
 */
function findUnquoted(text: string, visit: (c: string, i: number) => boolean): number {
  let quote: '"' | "'" | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (quote === '"' && c === '\\') {
      i++;
      continue;
    }
    if (quote !== undefined) {
      if (c === quote) quote = undefined;
      continue;
    }
    if (c === '"' || c === "'") quote = c;
    else if (visit(c, i)) return i;
  }
  return -1;
}

/** The line without its # comment (a # inside a string is kept). */
function stripComment(line: string): string {
  const at = findUnquoted(line, (c) => c === '#');
  return at < 0 ? line : line.slice(0, at);
}

function bracketsBalance(raw: string): boolean {
  let depth = 0;
  findUnquoted(raw, (c) => {
    if (c === '[') depth++;
    else if (c === ']') depth--;
    return false;
  });
  return depth <= 0;
}

const ESCAPES: Record<string, string> = { b: '\b', t: '\t', n: '\n', f: '\f', r: '\r', '"': '"', '\\': '\\' };

function parseValue(s: string): { value: TomlValue; rest: string } | undefined {
  if (s.startsWith('"')) {
    let out = '';
    for (let i = 1; i < s.length; i++) {
      const c = s[i] as string;
      if (c === '"') return { value: out, rest: s.slice(i + 1) };
      if (c === '\\') {
        const e = s[i + 1] ?? '';
        if (e === 'u' || e === 'U') {
          const len = e === 'u' ? 4 : 8;
          const hex = s.slice(i + 2, i + 2 + len);
          if (!/^[0-9A-Fa-f]+$/.test(hex) || hex.length !== len) return undefined;
          const cp = Number.parseInt(hex, 16);
          if (cp > 0x10ffff) return undefined;
          out += String.fromCodePoint(cp);
          i += 1 + len;
          continue;
        }
        const mapped = ESCAPES[e];
        if (mapped === undefined) return undefined;
        out += mapped;
        i++;
        continue;
      }
      out += c;
    }
    return undefined;
  }
  if (s.startsWith("'")) {
    const end = s.indexOf("'", 1);
    return end < 0 ? undefined : { value: s.slice(1, end), rest: s.slice(end + 1) };
  }
  if (s.startsWith('[')) {
    const items: TomlValue[] = [];
    let rest = s.slice(1).trimStart();
    for (;;) {
      if (rest.startsWith(']')) return { value: items, rest: rest.slice(1) };
      const item = parseValue(rest);
      if (item === undefined) return undefined;
      items.push(item.value);
      rest = item.rest.trimStart();
      if (rest.startsWith(',')) rest = rest.slice(1).trimStart();
      else if (!rest.startsWith(']')) return undefined;
    }
  }
  const word = /^[^\s,\]]+/.exec(s)?.[0];
  if (word === undefined) return undefined;
  const rest = s.slice(word.length);
  if (word === 'true' || word === 'false') return { value: word === 'true', rest };
  const n = word.replace(/_/g, '');
  if (/^[+-]?(0x[0-9A-Fa-f]+|0o[0-7]+|0b[01]+)$/.test(n)) {
    const sign = n.startsWith('-') ? -1 : 1;
    return { value: sign * Number(n.replace(/^[+-]/, '')), rest };
  }
  if (/^[+-]?([0-9]+)(\.[0-9]+)?([eE][+-]?[0-9]+)?$/.test(n)) return { value: Number(n), rest };
  return undefined;
}
