// The dashboard page: one WebSocket, frames {topic, kind, data}, each drawn by its view.
// State frames replace what a view shows; event frames add a line to a feed.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const LOST_AFTER_MS = 4000;   // no frame for this long (heartbeats come every second): reconnect
const STALE_AFTER_S = 10;     // no broker message for this long: the data is stale
const FEED_LINES = 100;

let socket = null;
let lastFrameAt = 0;
let retryMs = 500;
let pulse = null;

// --- small DOM helpers --------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function withToken(path, protocol) {
  const url = new URL(path, location.href);
  if (protocol) url.protocol = protocol;
  if (token) url.searchParams.set("token", token);
  return url.toString();
}

function lapTime(ms) {
  if (!ms) return "";
  const minutes = Math.floor(ms / 60000);
  return `${minutes}:${((ms % 60000) / 1000).toFixed(3).padStart(6, "0")}`;
}

// --- the connection -------------------------------------------------------------------------

function connect() {
  setConnection("connecting", "connecting…");
  socket = new WebSocket(withToken("ws", location.protocol === "https:" ? "wss:" : "ws:"));
  socket.onopen = () => {
    retryMs = 500;
    lastFrameAt = Date.now();
    // The server starts every connection with the current views and recent events.
    for (const id of ["race-control", "alerts"]) $(id).replaceChildren();
    for (const panel of rigPanels.values()) panel.querySelector(".game-events").replaceChildren();
  };
  socket.onmessage = (message) => {
    lastFrameAt = Date.now();
    const frame = JSON.parse(message.data);
    const view = VIEWS[frame.topic] || VIEWS[frame.topic.split(".")[0] + ".>"];
    if (view) { view(frame.data, frame); return; }
    // A named rig's views (dashboard.game.<rig>.<view>) and events (game.<rig>.event).
    const rigView = /^dashboard\.game\.([^.]+)\.(\w+)$/.exec(frame.topic);
    if (rigView && GAME_VIEWS[rigView[2]]) GAME_VIEWS[rigView[2]](frame.data, rigPanel(rigView[1]));
    const rigEvent = /^game\.([^.]+)\.event$/.exec(frame.topic);
    if (rigEvent) gameEvent(frame.data, rigPanel(rigEvent[1]));
  };
  socket.onclose = () => {
    socket = null;
    setConnection("lost", `connection lost: retrying in ${(retryMs / 1000).toFixed(1)} s`);
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 10000) * (0.8 + 0.4 * Math.random());
  };
}

function watchdog() {
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  if (Date.now() - lastFrameAt > LOST_AFTER_MS) {
    socket.close();  // silent too long: onclose reconnects
  } else if (pulse && !pulse.broker_connected) {
    setConnection("stale", "broker unreachable");
  } else if (pulse && (pulse.data_age_s === null || pulse.data_age_s > STALE_AFTER_S)) {
    setConnection("stale", pulse.data_age_s === null ? "live: no data yet"
      : `stale: no data for ${Math.round(pulse.data_age_s)} s`);
  } else {
    setConnection("ok", "live");
  }
}

function setConnection(state, text) {
  const badge = $("connection");
  badge.className = `pill ${state === "connecting" ? "lost" : state}`;
  badge.dataset.state = state;
  badge.textContent = text;
}

// --- live timing ----------------------------------------------------------------------------

function showSession(s) {
  $("meeting").textContent = s.meeting || "slipstream";
  $("session-name").textContent = [s.session, s.location && `at ${s.location}`,
    s.lap && `lap ${s.lap}/${s.total_laps}`, s.remaining].filter(Boolean).join(" ");
  $("session-status").textContent = s.status || "";
  $("weather").textContent = s.air_temp ? `air ${s.air_temp}°C, track ${s.track_temp}°C` : "";
}

function showTrackStatus(t) {
  const banner = $("track-status");
  banner.className = `banner ${t.level}`;
  banner.dataset.level = t.level;
  banner.dataset.status = t.status;
  banner.textContent = t.text;
}

function timedCell(timed) {
  return el("td", timed ? timed.colour : "", timed ? timed.value : "");
}

function showTower(rows) {
  $("tower-empty").hidden = rows.length > 0;
  $("tower").tBodies[0].replaceChildren(...rows.map((row) => {
    const tr = el("tr", row.pit === "OUT" || row.pit === "STOPPED" ? "out" : "");
    tr.dataset.number = row.number;
    const team = el("td", "team");
    team.style.background = row.colour;
    const tyre = el("td");
    if (row.tyre) {
      const compound = row.tyre.compound;
      tyre.append(el("span", `tyre ${compound}`, compound === "UNKNOWN" ? "?" : compound[0]),
        ` ${row.tyre.age ?? ""}`);
    }
    tr.append(el("td", "", row.position ?? ""), team, el("td", "tla", row.tla),
      el("td", "", row.gap), el("td", "", row.interval),
      timedCell(row.last_lap), timedCell(row.best_lap), ...[0, 1, 2].map((i) => timedCell(row.sectors[i])),
      tyre, el("td", "pit", row.pit));
    tr.title = `${row.name} (${row.team}), #${row.number}`;
    return tr;
  }));
}

// --- feeds ----------------------------------------------------------------------------------

function addLine(feedId, text, className, when) {
  const feed = typeof feedId === "string" ? $(feedId) : feedId;
  const line = el("li", className || "");
  if (when) line.append(el("time", "", when));
  line.append(text);
  feed.prepend(line);  // newest first
  while (feed.children.length > FEED_LINES) feed.lastChild.remove();
}

function raceControl(m) {
  const when = (m.Utc || "").slice(11, 19);
  addLine("race-control", m.Message || JSON.stringify(m), m.Flag === "RED" ? "critical" : "", when);
}

function alert(a) {
  addLine("alerts", a.message || JSON.stringify(a), a.severity,
    new Date().toLocaleTimeString([], { hour12: false }));
}

function dropped(d) {
  // This browser fell behind by more than its queue holds: say so, never hide it.
  for (const id of ["race-control", "alerts"]) {
    addLine(id, `${d.events} events skipped: this page fell behind`, "notice");
  }
}

// --- the game: a panel per rig ---------------------------------------------------------------

const rigPanels = new Map();  // "" (the single rig, game.<packet>) or the rig's name -> panel

function rigPanel(rig) {
  let panel = rigPanels.get(rig);
  if (!panel) {
    panel = $("game-panel").content.firstElementChild.cloneNode(true);
    panel.id = rig ? `game-${rig}` : "game";
    panel.dataset.rig = rig;
    panel.querySelector(".rig-name").textContent = rig ? `: ${rig}` : "";
    rigPanels.set(rig, panel);
    // In order of rig name, the single rig first.
    const after = [...rigPanels.keys()].sort().filter((name) => name < rig).pop();
    if (after === undefined) $("games").prepend(panel);
    else rigPanels.get(after).after(panel);
  }
  return panel;
}

function showGameSession(s, panel = rigPanel("")) {
  if (!s) return;
  panel.hidden = false;
  panel.querySelector(".game-session").textContent = `${s.track}, ${s.session_type}, ` +
    `${s.total_laps} laps, ` +
    `${Math.floor(s.time_left_s / 60)}:${String(s.time_left_s % 60).padStart(2, "0")} left`;
}

const WHEELS = [["FL", 2], ["FR", 3], ["RL", 0], ["RR", 1]];  // the game's order: RL RR FL FR

function showCar(car, panel = rigPanel("")) {
  if (!car) return;
  const part = (name) => panel.querySelector("." + name);
  panel.hidden = false;
  part("car-speed").textContent = car.speed;
  part("car-gear").textContent = car.gear === 0 ? "N" : car.gear === -1 ? "R" : car.gear;
  part("car-rpm").textContent = car.engine_rpm;
  part("car-throttle").style.width = `${Math.round(car.throttle * 100)}%`;
  part("car-brake").style.width = `${Math.round(car.brake * 100)}%`;
  part("car-tyre").textContent = car.compound
    ? `${car.compound} tyres, ${car.tyres_age_laps} laps old · fuel ${car.fuel_in_tank} kg` : "";
  part("tyres").replaceChildren(...WHEELS.map(([name, i]) => {
    const box = el("div");
    const wear = car.tyres_wear ? `${car.tyres_wear[i]}% worn` : "";
    box.append(el("strong", "", `${name} `), wear, el("br"),
      `${car.tyres_surface_temperature[i]}°C surface, ${car.tyres_inner_temperature[i]}°C inner`);
    return box;
  }));
}

function showLeaderboard(rows, panel = rigPanel("")) {
  if (!rows.length) return;
  panel.hidden = false;
  panel.querySelector(".leaderboard").tBodies[0].replaceChildren(...rows.map((r) => {
    const tr = el("tr", r.player ? "player" : "");
    tr.append(el("td", "", r.position), el("td", "", r.name), el("td", "", r.lap),
      el("td", "", lapTime(r.last_lap_ms)),
      el("td", "", r.position === 1 ? "" : `+${(r.gap_ms / 1000).toFixed(3)}`),
      el("td", "pit", r.pit ? "PIT" : ""));
    return tr;
  }));
}

// The standings consumer's table (standings.table): the top ten, and a link to all of it.
function showStandings(table) {
  const timed = table ? table.rows.filter((r) => r.position !== null) : [];
  $("standings-panel").hidden = timed.length === 0;
  if (!timed.length) return;
  $("standings-track").textContent = table.track || "";
  $("standings-page").hidden = !table.page;
  if (table.page) $("standings-page").href = table.page;
  $("standings").tBodies[0].replaceChildren(...timed.slice(0, 10).map((r) => {
    const tr = el("tr");
    tr.append(el("td", "", r.position), el("td", "", r.name), el("td", "", r.lap),
      el("td", "", r.points));
    return tr;
  }));
}

function gameEvent(e, panel = rigPanel("")) {
  addLine(panel.querySelector(".game-events"), e.name, e.code === "PENA" ? "warning" : "",
    `${Math.round(e.session_time)} s`);
}

// A trace chart: each series is [values, colour, maximum]; x is the distance round the lap.
function drawTrace(canvas, trace, series) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const lapLength = Math.max(1, ...trace.current.distance, ...trace.previous.distance);
  const pad = 4;
  const plot = (distance, values, colour, maximum) => {
    g.strokeStyle = colour;
    g.lineWidth = 1.5;
    g.beginPath();
    values.forEach((v, i) => {
      const x = (distance[i] / lapLength) * width;
      const y = height - pad - (Math.min(v, maximum) / maximum) * (height - 2 * pad);
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  };
  for (const [lap, faded] of [[trace.previous, true], [trace.current, false]]) {
    for (const [field, colour, maximum] of series) {
      plot(lap.distance, lap[field], faded ? "#4a505c" : colour, maximum);
    }
  }
  g.fillStyle = "#8a919e";
  g.font = "11px system-ui";
  g.fillText(canvas.dataset.label, 6, 13);
}

function showTrace(trace, panel = rigPanel("")) {
  if (!trace.current.distance.length && !trace.previous.distance.length) return;
  const topRpm = Math.max(1000, ...trace.current.engine_rpm, ...trace.previous.engine_rpm);
  const canvas = (name) => panel.querySelector(".trace-" + name);
  drawTrace(canvas("speed"), trace, [["speed", "#4fc3f7", 360]]);
  drawTrace(canvas("pedals"), trace, [["throttle", "#1fa34a", 1], ["brake", "#e0262b", 1]]);
  drawTrace(canvas("gear"), trace, [["gear", "#f2c500", 8]]);
  drawTrace(canvas("rpm"), trace, [["engine_rpm", "#a450e6", topRpm]]);
}

// Each rig's views, by the last token of dashboard.game[.<rig>].<view>.
const GAME_VIEWS = {session: showGameSession, car: showCar, leaderboard: showLeaderboard,
                    trace: showTrace};

// --- which view draws which topic -----------------------------------------------------------

const VIEWS = {
  "dashboard.heartbeat": (p) => { pulse = p; },
  "dashboard.viewers": (v) => {
    $("viewers").textContent = `${v.total} viewer${v.total === 1 ? "" : "s"}`;
  },
  "dashboard.dropped": dropped,
  "dashboard.session": showSession,
  "live.TrackStatus": showTrackStatus,
  "dashboard.tower": showTower,
  "live.RaceControlMessages": raceControl,
  "alerts.>": alert,
  "dashboard.game.session": (s) => showGameSession(s),
  "dashboard.game.car": (car) => showCar(car),
  "dashboard.game.leaderboard": (rows) => showLeaderboard(rows),
  "dashboard.game.trace": (trace) => showTrace(trace),
  "game.event": (e) => gameEvent(e),
  "standings.table": showStandings,
  // Another session was replayed into the broker: the last one's race control goes.
  "live.session_start": () => $("race-control").replaceChildren(),
};

for (const link of document.querySelectorAll("footer a")) link.href = withToken(link.getAttribute("href"));
setInterval(watchdog, 1000);
connect();
