// One line of `vmplug doctor`'s report; shared by the doctor and its check modules.

export type CheckStatus = 'ok' | 'warn' | 'fail' | 'skip';

export interface DoctorCheck {
  name: string;
  status: CheckStatus;
  detail: string;
}
