// The allow-list of host block devices is a list of globs over device paths (`/dev/rbd*`).
// A tiny matcher of our own: `*` is any run of characters within one path component and `?` one
// character (neither crosses `/`); everything else is literal. Brackets, braces and `**` are
// refused rather than half-supported, so a pattern never means less (or more) than it says.
// Why not a library: picomatch is only in node_modules as a dependency of dev tools (not ours to
// rely on in production), and Node 20's path.matchesGlob is experimental and prints a warning.

export interface DeviceGlob {
  readonly pattern: string;
  readonly re: RegExp;
}

/** Builds a glob; throws Error with a human message when the pattern is not acceptable. */
export function compileDeviceGlob(pattern: string): DeviceGlob {
  if (!pattern.startsWith('/dev/')) throw new Error(`"${pattern}" must start with /dev/`);
  if (pattern.includes('**')) throw new Error(`"${pattern}": ** is not supported (use * per component)`);
  if (/[[\]{}\\!\0]/.test(pattern)) {
    throw new Error(`"${pattern}": only * and ? are special; [ ] { } ! \\ are not allowed`);
  }
  if (pattern.split('/').some((c, i) => i > 0 && (c === '' || c === '.' || c === '..'))) {
    throw new Error(`"${pattern}" must be a normalized absolute path`);
  }
  let src = '^';
  for (const ch of pattern) {
    if (ch === '*') src += '[^/]*';
    else if (ch === '?') src += '[^/]';
    else src += ch.replace(/[.+^$()|]/g, '\\$&');
  }
  return { pattern, re: new RegExp(`${src}$`) };
}

export function matchesDeviceGlob(glob: DeviceGlob, path: string): boolean {
  return glob.re.test(path);
}

/** The first glob any of `paths` matches, or undefined. */
export function firstMatch(globs: readonly DeviceGlob[], paths: readonly string[]): DeviceGlob | undefined {
  return globs.find((g) => paths.some((p) => g.re.test(p)));
}

/**
 * The allow-list as the setting spells it: globs separated by commas (whitespace around them is
 * ignored); an empty string allows no device at all (block mode off).
 */
export function parseDeviceGlobList(text: string): DeviceGlob[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map(compileDeviceGlob);
}
