import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { livenessOf, parseStat, processStamp } from '../../../daemon/sandboxes/process-liveness.js';

describe('process liveness by pid and start time', () => {
  it('parses state and start time after the last parenthesis of the command name', () => {
    const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
    fields[0] = 'S';
    fields[19] = '987654';
    expect(parseStat(`42 (qemu (evil) x) ${fields.join(' ')}`)).toEqual({ state: 'S', startTicks: '987654' });
    expect(parseStat('42 (qemu) S 1 2')).toBeUndefined();
    expect(parseStat('garbage')).toBeUndefined();
  });

  it('sees a process alive, then exited once killed; a reused pid is not the same process', async () => {
    const me = await processStamp(process.pid);
    expect(me).toBeDefined();
    if (me === undefined) return;
    expect(await livenessOf(me)).toBe('alive');
    expect(await livenessOf({ ...me, startTicks: `${me.startTicks}1` })).toBe('exited');
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    await once(child, 'spawn');
    const stamp = await processStamp(child.pid ?? -1);
    expect(stamp).toBeDefined();
    child.kill('SIGKILL');
    await once(child, 'exit');
    if (stamp !== undefined) expect(await livenessOf(stamp)).toBe('exited');
    expect(await processStamp(2 ** 22 + 1)).toBeUndefined();
  });
});
