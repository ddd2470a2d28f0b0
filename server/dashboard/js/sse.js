// The event stream (GET /events, Server-Sent Events) read with fetch(): EventSource cannot send the
// Authorization header. The reader sends Last-Event-ID itself and reconnects with a growing delay, so a
// dropped connection or a daemon restart loses no event (the ids are persisted by the daemon).

import { askToken, authHeaders } from "./api.js";

// The text/event-stream format (HTML's "event stream interpretation"), fed in chunks that may split anywhere.
export class SseParser {
  constructor() {
    this.buffer = "";
    this.afterCR = false;
    this.reset();
    this.lastId = null;
  }

  reset() {
    this.data = [];
    this.type = "";
  }

  feed(chunk) {
    // A chunk that ended in "\r" ended its line; a "\n" opening the next is that same line break.
    if (this.afterCR && chunk.startsWith("\n")) chunk = chunk.slice(1);
    this.afterCR = chunk.endsWith("\r");
    const lines = (this.buffer + chunk).split(/\r\n|\n|\r/);
    this.buffer = lines.pop(); // the unfinished line
    const events = [];
    for (const line of lines) this.line(line, events);
    return events;
  }

  line(line, events) {
    if (line === "") {
      if (this.data.length) {
        events.push({ id: this.lastId, event: this.type || "message", data: this.data.join("\n") });
      }
      this.reset();
      return;
    }
    if (line.startsWith(":")) return; // a comment: the daemon's heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.lastId = value;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Reads `path` until stop(); onEvent({id, event, data}) with data parsed, onStatus(state, detail).
export function openStream(path, { onEvent, onStatus = () => {}, lastId = null }) {
  let stopped = false;
  let controller = null;
  let delay = 1000;

  async function readOnce() {
    controller = new AbortController();
    const headers = { ...authHeaders(), Accept: "text/event-stream" };
    if (lastId != null) headers["Last-Event-ID"] = String(lastId);
    const response = await fetch(path, { headers, signal: controller.signal, cache: "no-store" });
    if (response.status === 401) {
      onStatus("token");
      await askToken();
      return;
    }
    if (!response.ok || !response.body) throw new Error(`${path}: HTTP ${response.status}`);
    onStatus("live");
    delay = 1000;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser();
    parser.lastId = lastId;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      for (const message of parser.feed(value)) {
        lastId = message.id ?? lastId;
        let data = null;
        try {
          data = JSON.parse(message.data);
        } catch {
          continue;
        }
        try {
          onEvent({ id: message.id, event: message.event, data });
        } catch (error) {
          console.error("ftq: applying an event failed", message, error);
        }
      }
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await readOnce();
      } catch (error) {
        if (stopped) return;
        onStatus("reconnecting", String(error.message || error));
      }
      if (stopped) return;
      onStatus("reconnecting");
      await sleep(delay * (0.8 + 0.4 * Math.random()));
      delay = Math.min(delay * 2, 30000);
    }
  })();

  return {
    stop() {
      stopped = true;
      controller?.abort();
    },
    get lastId() {
      return lastId;
    },
  };
}
