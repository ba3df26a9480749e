/** The outcome of a check that can fail for a stated reason: stable for logs, worded for people. */
export type Verified<T, R extends string> = { ok: true; value: T } | Rejected<R>;
export interface Rejected<R extends string> {
  ok: false;
  reason: R;
  message: string;
}

export const reject = <R extends string>(reason: R, message: string): Rejected<R> => ({ ok: false, reason, message });
export const accept = <T>(value: T): { ok: true; value: T } => ({ ok: true, value });
