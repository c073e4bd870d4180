// What the examples share: checks that fail the run, and one line per step.

/** The server (or the audited service) answered, but not as the contract says. */
export class ExampleFailed extends Error {}

export function check(condition: boolean, message: string): asserts condition {
  if (!condition) throw new ExampleFailed(message);
}

export function ok(step: string, detail: string): void {
  console.log(`ok    ${step.padEnd(10)} ${detail}`);
}

export const sameList = <T>(a: readonly T[], b: readonly T[]): boolean =>
  a.length === b.length && a.every((value, i) => value === b[i]);

/** Rejects after `ms` with `message`; the timer does not keep the process alive. */
export function deadline(ms: number, message: string): Promise<never> {
  return new Promise((_, reject) => setTimeout(() => reject(new ExampleFailed(message)), ms).unref());
}
