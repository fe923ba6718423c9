import { type FSWatcher, watch } from 'node:fs';
import { dirname } from 'node:path';
import type { PodVolume } from '../../api/index.js';
import { ListenerSet } from '../../core/listeners.js';
import { RerunningTask } from '../../core/rerunning-task.js';
import type { PodVolumeStatus } from './kube/status.js';

// The node's pod volumes (DESIGN §5b) as reporting sees them: the engine's list kept in memory
// (the reporter reads the status synchronously), re-read after each publish or unpublish, when
// Kata drops its sandbox-id file beside a record (each published record's directory is watched),
// and on a slow resync that catches anything a watch missed. Which change is news (a volume
// becoming Consumed) is decided by `consumedNews`, a pure function. Observes; cannot fail a publish.

/** The status row of a pod volume: a whitelist of its fields, so nothing secret can slip in. */
export function podVolumeStatus(v: PodVolume): PodVolumeStatus {
  const s: PodVolumeStatus = {
    podUid: v.podUid,
    volumeId: v.volumeId,
    mode: v.mode,
    state: v.state,
    targetPath: v.targetPath,
    fsType: v.fsType,
    readOnly: v.readOnly,
  };
  if (v.sandboxId !== undefined) s.sandboxId = v.sandboxId;
  if (v.device !== undefined) s.device = v.device;
  if (v.pod?.name !== undefined || v.pod?.namespace !== undefined) {
    s.pod = {
      ...(v.pod.name !== undefined ? { name: v.pod.name } : {}),
      ...(v.pod.namespace !== undefined ? { namespace: v.pod.namespace } : {}),
    };
  }
  const last = v.timeline.at(-1);
  if (last !== undefined) s.since = last.at;
  if (v.problem !== undefined) s.error = `${v.problem.code}: ${v.problem.detail}`;
  return s;
}

const keyOf = (v: Pick<PodVolume, 'podUid' | 'volumeId'>): string => `${v.podUid}/${v.volumeId}`;

/** What was last seen of a volume: enough to tell a new consumer. */
export interface SeenPodVolume {
  state: PodVolume['state'];
  sandboxId?: string;
}

/**
 * The volumes that became Consumed since `before` (by key): Consumed now, and then not Consumed,
 * Consumed by another sandbox, or not there yet (published and plugged between two reads).
 * `before` undefined is the first read after a start: a baseline, no news (a volume consumed
 * while vmplugd was down had its moment unseen; an Event now would repeat one after each restart).
 */
export function consumedNews(
  before: ReadonlyMap<string, SeenPodVolume> | undefined,
  after: readonly PodVolume[],
): PodVolume[] {
  if (before === undefined) return [];
  return after.filter((v) => {
    if (v.state !== 'Consumed') return false;
    const was = before.get(keyOf(v));
    return was === undefined || was.state !== 'Consumed' || was.sandboxId !== v.sandboxId;
  });
}

export interface PodVolumeWatchOptions {
  /** Every pod volume of the node (the engine's list). */
  list(): Promise<PodVolume[]>;
  /** Told of each volume that became Consumed. Must not throw or block. */
  onConsumed(v: PodVolume): void;
  log: { debug(obj: Record<string, unknown>, msg: string): void };
  /** Slow resync period (default 30 s). */
  resyncMs?: number;
  /** Bound on one list read (default 5 s). */
  listTimeoutMs?: number;
  /** Watches a record directory (default fs.watch); tests replace it. */
  watchDir?: (dir: string, onChange: () => void) => { close(): void };
}

export class PodVolumeWatch {
  readonly #o: PodVolumeWatchOptions;
  readonly #listeners = new ListenerSet<[]>();
  readonly #watchers = new Map<string, { close(): void }>();
  #volumes: readonly PodVolume[] = [];
  #seen: Map<string, SeenPodVolume> | undefined;
  readonly #reads = new RerunningTask(
    () => this.#read(),
    () => this.#closed,
  );
  #closed = false;
  #timer: NodeJS.Timeout | undefined;

  constructor(o: PodVolumeWatchOptions) {
    this.#o = o;
  }

  /** The pod volumes as last read. */
  current(): readonly PodVolume[] {
    return this.#volumes;
  }

  /** Told whenever the list read differs from the one before. */
  subscribe(listener: () => void): () => void {
    return this.#listeners.add(listener);
  }

  /** First read (the baseline) and the slow resync. */
  start(): void {
    if (this.#timer !== undefined || this.#closed) return;
    void this.refresh();
    this.#timer = setInterval(() => void this.refresh(), this.#o.resyncMs ?? 30_000);
    this.#timer.unref();
  }

  /**
   * Re-reads the list. Calls while a read runs share it and ask for one more after it, so the
   * last read always starts after the last change.
   */
  refresh(): Promise<void> {
    return this.#reads.run();
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#timer);
    for (const w of this.#watchers.values()) w.close();
    this.#watchers.clear();
  }

  async #read(): Promise<void> {
    if (this.#closed) return;
    let list: PodVolume[];
    let timer: NodeJS.Timeout | undefined;
    try {
      list = await Promise.race([
        this.#o.list(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error('timed out')), this.#o.listTimeoutMs ?? 5_000);
        }),
      ]);
    } catch (err) {
      this.#o.log.debug(
        { err: (err as Error).message },
        'pod volumes not read for reporting; kept the last list',
      );
      return;
    } finally {
      clearTimeout(timer);
    }
    if (this.#closed) return;
    const news = consumedNews(this.#seen, list);
    const changed =
      JSON.stringify(list.map(podVolumeStatus)) !== JSON.stringify(this.#volumes.map(podVolumeStatus));
    this.#volumes = list;
    this.#seen = new Map(
      list.map((v) => [
        keyOf(v),
        { state: v.state, ...(v.sandboxId !== undefined ? { sandboxId: v.sandboxId } : {}) },
      ]),
    );
    // A record Kata consumed between this read and its new watch would wait for the resync.
    if (this.#watchRecords(list)) this.#reads.again();
    for (const v of news) {
      try {
        this.#o.onConsumed(v);
      } catch {
        // An observer's bug must not stop the watch.
      }
    }
    if (changed) this.#listeners.emit();
  }

  /**
   * Watches the directories of records Kata may consume (step Published), drops the others;
   * answers whether a watch was added.
   */
  #watchRecords(list: readonly PodVolume[]): boolean {
    let added = false;
    const wanted = new Set(list.filter((v) => v.step === 'Published').map((v) => dirname(v.recordPath)));
    for (const [dir, w] of this.#watchers) {
      if (!wanted.has(dir)) {
        w.close();
        this.#watchers.delete(dir);
      }
    }
    for (const dir of wanted) {
      if (this.#watchers.has(dir)) continue;
      try {
        this.#watchers.set(
          dir,
          (this.#o.watchDir ?? watchDirectory)(dir, () => void this.refresh()),
        );
        added = true;
      } catch (err) {
        // No watch (inotify limits, the directory just went): the resync still catches up.
        this.#o.log.debug({ dir, err: (err as Error).message }, 'record directory not watched');
      }
    }
    return added;
  }
}

function watchDirectory(dir: string, onChange: () => void): { close(): void } {
  const w: FSWatcher = watch(dir, { persistent: false }, () => onChange());
  // A watched directory removed (an unpublish) ends its watch with an error event: not a crash.
  w.on('error', () => w.close());
  return w;
}
