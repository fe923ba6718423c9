import type { Attachment, Sandbox } from './client.js';

// Human output of `vmplug`: short, aligned, no colour (it goes to logs as often as to terminals).

export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return `${[line(headers), ...rows.map(line)].join('\n')}\n`;
}

function podOf(s: Sandbox): string {
  if (s.pod === undefined) return '-';
  const name =
    s.pod.namespace !== undefined && s.pod.name !== undefined
      ? `${s.pod.namespace}/${s.pod.name}`
      : (s.pod.name ?? '');
  return name !== '' ? name : (s.pod.uid ?? '-');
}

export function sandboxTable(sandboxes: Sandbox[]): string {
  if (sandboxes.length === 0) return 'no sandboxes\n';
  return table(
    ['SANDBOX', 'KIND', 'STATE', 'POD', 'VOLUMES'],
    sandboxes.map((s) => [
      s.id,
      s.kind,
      s.state,
      podOf(s),
      s.volumes.length === 0 ? '-' : s.volumes.map((v) => `${v.volumeId}(${v.state})`).join(','),
    ]),
  );
}

function fields(pairs: [string, string | number | boolean | undefined][]): string {
  const shown = pairs.filter(([, v]) => v !== undefined) as [string, string | number | boolean][];
  const w = Math.max(...shown.map(([k]) => k.length));
  return `${shown.map(([k, v]) => `${`${k}:`.padEnd(w + 1)} ${String(v)}`).join('\n')}\n`;
}

export function sandboxDetails(s: Sandbox): string {
  let out = fields([
    ['sandbox', s.id],
    ['kind', s.kind],
    ['state', s.state],
    ['reason', s.reason],
    ['hypervisor', s.hypervisorStatus],
    ['pid', s.pid],
    ['pod', s.pod?.name === undefined ? undefined : `${s.pod.namespace ?? '?'}/${s.pod.name}`],
    ['pod uid', s.pod?.uid],
    ['discovered', s.discoveredAt],
  ]);
  out += '\n';
  out +=
    s.volumes.length === 0
      ? 'no volumes\n'
      : table(
          ['VOLUME', 'MODE', 'BUS', 'STATE', 'RO', 'GUEST'],
          s.volumes.map((v) => [v.volumeId, v.mode, v.bus, v.state, v.readOnly ? 'yes' : 'no', v.guestHint]),
        );
  if (s.nics !== undefined && s.nics.length > 0) {
    out += '\n';
    out += table(
      ['NIC', 'MAC', 'TAP', 'STATE', 'PORT'],
      s.nics.map((n) => [n.nicId, n.mac, n.tapOwned ? n.tap : `${n.tap} (given)`, n.state, n.port ?? '-']),
    );
  }
  return out;
}

function sourceText(a: Attachment): string {
  const s = a.source;
  if (s.type === 'hostDevice') return s.path;
  const ns = s.namespace ? `${s.namespace}/` : '';
  const snap = s.snapshot ? `@${s.snapshot}` : '';
  return `rbd:${s.pool}/${ns}${s.image}${snap} (user ${s.user}, monitors ${s.monitors.join(',')})`;
}

export function attachmentDetails(a: Attachment): string {
  let out = fields([
    ['sandbox', a.sandboxId],
    ['volume', a.volumeId],
    ['state', a.state],
    ['mode', a.mode],
    ['bus', a.bus],
    ['read-only', a.readOnly],
    ['source', sourceText(a)],
    ['node name', a.nodeName],
    ['device id', a.deviceId],
    ['serial', a.serial],
    ['guest', a.guestHint],
    [
      'last error',
      a.lastError === undefined
        ? undefined
        : `${a.lastError.code}: ${a.lastError.message} (${a.lastError.at})`,
    ],
  ]);
  if (a.timeline.length > 0) {
    out += `\n${table(
      ['STEP', 'AT', 'MS'],
      a.timeline.map((t) => [t.step, t.at, String(t.ms)]),
    )}`;
  }
  if (a.stats !== undefined && Object.keys(a.stats).length > 0) {
    out += `\n${table(
      ['STAT', 'VALUE'],
      Object.entries(a.stats).map(([k, v]) => [k, String(v)]),
    )}`;
  }
  return out;
}

export function attachedLine(a: Attachment, created: boolean): string {
  const verb = created ? 'attached' : 'already attached';
  return `${verb} ${a.volumeId} to ${a.sandboxId}: ${a.mode} on ${a.bus}${a.readOnly ? ' (read-only)' : ''}, device ${a.deviceId}, guest ${a.guestHint}\n`;
}

/** Node facts: top-level scalars as fields, nested values as compact JSON. */
export function nodeDetails(facts: Record<string, unknown>): string {
  return fields(
    Object.entries(facts).map(([k, v]) => [
      k,
      typeof v === 'object' && v !== null ? JSON.stringify(v) : (v as string | number | boolean | undefined),
    ]),
  );
}
