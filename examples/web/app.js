// A live match page on the realtime client SDK, no framework: the connection state, a room's
// score (`match.update` with `{ score: [a, b] }`; the last one read from the room's history on
// join), who is in the room, and the user's notifications with mark-as-read buttons.
//
// Query string: ?server=http://127.0.0.1:8080&token=<JWT>&room=competition:42
//   server  the realtime server's base URL (http(s)://host:port; a ws(s)://.../ws URL works too)
//   token   a JWT for the user (`realtime gentoken --sub alice --rooms 'competition:*'`)
//   room    the room to watch (default competition:42)

import { RealtimeClient } from "../../sdk-client/dist/realtime-client.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const serverParam = params.get("server") || "http://127.0.0.1:8080";
const token = params.get("token");
const roomId = params.get("room") || "competition:42";

/** http(s)://host:port from either form of the server parameter. */
function httpBase(server) {
  const url = new URL(server);
  const protocol = url.protocol === "wss:" || url.protocol === "https:" ? "https:" : "http:";
  return `${protocol}//${url.host}`;
}
const base = httpBase(serverParam);
const wsUrl = `${base.replace(/^http/, "ws")}/ws`;
const graphqlUrl = `${base}/graphql`;

function tokenSubject(jwt) {
  try {
    const payload = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub ?? null;
  } catch {
    return null;
  }
}

function log(text) {
  const line = document.createElement("div");
  line.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  $("log").prepend(line);
  while ($("log").childElementCount > 100) $("log").lastElementChild.remove();
}

function showError(error) {
  $("last-error").textContent = error ? `${error.code ?? "error"}: ${error.message ?? error}` : "";
}

$("room-id").textContent = roomId;

if (token) {
  main();
} else {
  const help = $("setup-help");
  help.hidden = false;
  help.textContent =
    "Add ?server=http://127.0.0.1:8080&token=<JWT>&room=competition:42 to the URL " +
    "(a token: `realtime gentoken --sub alice --rooms 'competition:*'`).";
  renderState("closed");
}

function renderState(state) {
  const badge = $("state");
  badge.textContent = state;
  badge.dataset.state = state;
}

function main() {
  $("user").textContent = tokenSubject(token) ?? "?";

  const client = new RealtimeClient({
    url: wsUrl,
    graphqlUrl,
    // A page with a fixed token; a real app asks its backend for a fresh one here.
    getToken: async () => token,
  });
  window.realtimeClient = client; // for poking from the console

  // ---- connection state ----------------------------------------------------------------------

  renderState(client.state);
  client.on("state", (state) => renderState(state));
  client.on("connected", (info) => {
    $("node").textContent = info.node ?? "–";
    showError(null);
    log(info.reconnected ? `reconnected (node ${info.node})` : `connected (node ${info.node})`);
    loadNotifications();
  });
  client.on("disconnected", ({ code, reason, willReconnect, delayMs }) => {
    log(`disconnected ${code} ${reason || ""}${willReconnect ? `, retry in ${delayMs} ms` : ""}`);
  });
  client.on("error", (error) => {
    showError(error);
    log(`error ${error.code}: ${error.message}`);
  });

  // ---- the room: score and presence ----------------------------------------------------------

  const room = client.room(roomId);

  function renderScore(score) {
    const [a, b] = score;
    const el = $("score");
    el.textContent = `${a} : ${b}`;
    el.dataset.score = `${a}:${b}`;
    $("score-updated").textContent = new Date().toLocaleTimeString();
  }

  // The room position of the score on screen, so that a history read crossing a live event never
  // puts an older score over a newer one (offsets grow within an epoch; a new epoch is newer).
  let shown = { offset: 0, epoch: "" };
  function showScore(data, push) {
    if (!Array.isArray(data?.score) || data.score.length !== 2) return false;
    if (push.epoch !== undefined) {
      if (push.epoch === shown.epoch && push.offset <= shown.offset) return false;
      shown = { offset: push.offset, epoch: push.epoch };
    }
    renderScore(data.score);
    return true;
  }

  room.on("match.update", (data, push) => {
    if (showScore(data, push)) log(`match.update ${JSON.stringify(data.score)}`);
  });

  // The last score from the room's history (competition rooms keep one): after the first join,
  // and after a re-join that could not replay what was missed while away.
  async function loadLastScore() {
    try {
      const { events } = await room.history(1);
      const last = events[events.length - 1];
      if (last?.event === "match.update") showScore(last.data, last);
    } catch (error) {
      log(`history: ${error.code ?? error.message}`);
    }
  }

  function renderPresence(members) {
    const list = $("presence");
    list.replaceChildren(
      ...members.map((member) => {
        const item = document.createElement("li");
        item.textContent = member;
        item.dataset.user = member;
        return item;
      }),
    );
    $("presence-count").textContent = String(members.length);
  }

  let presenceRequest = 0;
  async function refreshPresence() {
    const mine = ++presenceRequest;
    try {
      const members = await room.presence();
      if (mine === presenceRequest) renderPresence(members);
    } catch (error) {
      log(`presence failed: ${error.code ?? error.message}`);
    }
  }
  room.on("room.user_joined", () => refreshPresence());
  room.on("room.user_left", () => refreshPresence());
  room.on("resubscribed", ({ recovered }) => {
    // recovered: the events missed while away follow, in order; otherwise read the last score.
    log(`room ${roomId} re-joined${recovered ? ", missed events replayed" : ", missed events lost: reading the last score"}`);
    if (!recovered) loadLastScore();
    refreshPresence();
  });

  // ---- notifications -------------------------------------------------------------------------

  // id -> notification, in display order: newest first (the server's order for a listing, new
  // ones put in front as they arrive).
  let notifications = new Map();

  function summary(content) {
    if (content == null) return "";
    if (typeof content === "string") return content;
    return Object.entries(content)
      .map(([key, value]) => `${key}: ${typeof value === "object" ? JSON.stringify(value) : value}`)
      .join(", ");
  }

  function renderNotifications() {
    const items = [...notifications.values()];
    $("notifications").replaceChildren(
      ...items.map((notification) => {
        const item = document.createElement("li");
        item.dataset.id = notification.id;
        item.dataset.read = String(Boolean(notification.read));
        const text = document.createElement("span");
        const type = document.createElement("span");
        type.className = "type";
        type.textContent = notification.type;
        const content = document.createElement("span");
        content.className = "content muted";
        content.textContent = ` ${summary(notification.content)}`;
        text.append(type, content);
        const button = document.createElement("button");
        button.type = "button";
        button.className = "mark-read";
        button.textContent = notification.read ? "Read" : "Mark as read";
        button.disabled = Boolean(notification.read);
        button.addEventListener("click", () => markRead(notification.id));
        item.append(text, button);
        return item;
      }),
    );
    $("notifications-empty").hidden = items.length > 0;
    $("unread").textContent = String(items.filter((notification) => !notification.read).length);
  }

  // Notifications that arrived live while a listing was in flight: the listing may predate them.
  const arrivedDuringListing = new Map();
  let listing = 0;

  async function loadNotifications() {
    const mine = ++listing;
    arrivedDuringListing.clear();
    try {
      const page = await client.notifications.list({ first: 20 });
      if (mine !== listing) return; // a newer listing is on its way
      const listed = new Map(page.items.map((notification) => [notification.id, notification]));
      const newer = [...arrivedDuringListing].filter(([id]) => !listed.has(id));
      notifications = new Map([...newer, ...listed]);
      renderNotifications();
    } catch (error) {
      showError(error);
      log(`notifications failed: ${error.code ?? error.message}`);
    }
  }

  async function markRead(id) {
    try {
      const updated = await client.notifications.markRead(id);
      notifications.set(id, { ...notifications.get(id), ...(updated ?? {}), read: true });
      renderNotifications();
    } catch (error) {
      showError(error);
    }
  }

  $("mark-all").addEventListener("click", async () => {
    try {
      await client.notifications.markAllRead();
      for (const [id, notification] of notifications) notifications.set(id, { ...notification, read: true });
      renderNotifications();
    } catch (error) {
      showError(error);
    }
  });

  client.notifications.onNew((notification) => {
    const entry = { read: false, readAt: null, ...notification };
    arrivedDuringListing.set(notification.id, entry);
    const rest = [...notifications].filter(([id]) => id !== notification.id);
    notifications = new Map([[notification.id, entry], ...rest]);
    renderNotifications();
    log(`notification.new ${notification.type}`);
  });

  // ---- go ------------------------------------------------------------------------------------

  // The first `connected` joins the room; after a reconnect the SDK joins it again by itself
  // (the `resubscribed` handler above refreshes presence then).
  let joinStarted = false;
  client.on("connected", () => {
    if (joinStarted) return;
    joinStarted = true;
    room
      .join()
      .then(() => {
        log(`joined ${roomId}`);
        loadLastScore();
        return refreshPresence();
      })
      .catch((error) => {
        joinStarted = false;
        showError(error);
        log(`join failed: ${error.code ?? error.message}`);
      });
  });
  client.connect();
}
