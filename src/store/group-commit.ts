/**
 * Group commit: independent writes that arrive while the database is busy share one statement and
 * one commit. A write that finds a free slot goes at once, alone, so an idle server adds no delay;
 * under load, what queues behind the busy slots goes together in the next statement. Each caller
 * still gets its own answer only after its write has committed.
 */

/** The outcome of one item of a flushed group: its result, or the error that item alone met. */
export type Outcome<O> = { ok: true; value: O } | { ok: false; error: unknown };

interface Waiting<I, O> {
  item: I;
  resolve: (value: O) => void;
  reject: (error: unknown) => void;
}

export class GroupCommit<I, O> {
  private readonly queue: Waiting<I, O>[] = [];
  private inFlight = 0;

  /**
   * @param flush writes a group and answers one outcome per item, in order
   * @param slots groups in flight at once (at most the connections it may use)
   * @param maxGroup items in one group
   */
  constructor(
    private readonly flush: (items: I[]) => Promise<Outcome<O>[]>,
    private readonly slots: number,
    private readonly maxGroup: number,
  ) {}

  submit(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      this.drain();
    });
  }

  private drain(): void {
    while (this.inFlight < this.slots && this.queue.length > 0) {
      const group = this.queue.splice(0, this.maxGroup);
      this.inFlight++;
      this.flush(group.map((w) => w.item))
        .then(
          (outcomes) => {
            group.forEach((w, i) => {
              const outcome = outcomes[i];
              if (!outcome) w.reject(new Error('group commit: no outcome for an item'));
              else if (outcome.ok) w.resolve(outcome.value);
              else w.reject(outcome.error);
            });
          },
          (error: unknown) => group.forEach((w) => w.reject(error)),
        )
        .finally(() => {
          this.inFlight--;
          this.drain();
        });
    }
  }
}
