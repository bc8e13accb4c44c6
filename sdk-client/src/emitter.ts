// A tiny typed event emitter: on() returns its own unsubscribe function, and a
// listener that throws cannot break the client's state machine.

export type Unsubscribe = () => void;
// `(...args: never) => void` is the top type of functions: every listener fits in one Set.
type AnyListener = (...args: never) => void;

/** `Events` maps each event name to the tuple of arguments its listeners get. */
export class Emitter<Events extends { [Name in keyof Events]: unknown[] }> {
  private readonly listenersByName = new Map<keyof Events, Set<AnyListener>>();

  on<Name extends keyof Events>(name: Name, listener: (...args: Events[Name]) => void): Unsubscribe {
    let listeners = this.listenersByName.get(name);
    if (!listeners) this.listenersByName.set(name, (listeners = new Set()));
    listeners.add(listener);
    return () => this.off(name, listener);
  }

  off<Name extends keyof Events>(name: Name, listener: (...args: Events[Name]) => void): void {
    this.listenersByName.get(name)?.delete(listener);
  }

  emit<Name extends keyof Events>(name: Name, ...args: Events[Name]): void {
    const listeners = this.listenersByName.get(name);
    if (!listeners) return;
    // Copy first: a listener may unsubscribe itself (or others) while we iterate.
    for (const listener of [...listeners]) {
      try {
        (listener as unknown as (...args: Events[Name]) => void)(...args);
      } catch (error) {
        // Rethrow outside our call stack: the app sees its bug as an uncaught error,
        // and the reconnect logic that was emitting carries on.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}
