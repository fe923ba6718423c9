import { stat } from 'node:fs/promises';
import { ValidationError } from '../core/errors.js';

// Block mode hands QEMU a device node the CSI plugin mapped at NodeStage. Checking it here turns
// the usual mistakes (the mapping is gone, a path to a file or a directory) into a 422 that names
// the field, before anything is written to the journal, instead of a backend error from QEMU.

/** Resolves when `path` (symlinks followed, as /dev/disk/by-id links are) is a block device. */
export async function checkHostBlockDevice(path: string, field = 'source.path'): Promise<void> {
  let st: Awaited<ReturnType<typeof stat>>;
  try {
    st = await stat(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ValidationError(
      field,
      code === 'ENOENT' ? `${path} does not exist on this node` : `${path} cannot be examined (${code})`,
    );
  }
  if (!st.isBlockDevice()) throw new ValidationError(field, `${path} is not a block device`);
}
