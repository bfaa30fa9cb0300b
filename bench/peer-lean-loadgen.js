'use strict';
// A drop-in for peer-socketio's src/loadgen.js (same IPC requests init, run,
// close; same report) built like meshgate's lean load generator
// (src/bench/http_load.rs): each worker owns one keep-alive TCP connection,
// writes each request as one buffer and reads the response head and its
// content-length body itself, with no HTTP client library in between.
// bench/compare.sh copies it over the peer's loadgen.js in a second copy of
// the peer ("peer-api-lean" runs), so both servers can be measured with a
// load generator of the same kind. The requests are the same as undici's:
// POST /daemons/:id/message, JSON body {taskId, message, sentAtNs},
// closed loop, round robin over the ids.
const net = require('node:net');
const { randomUUID } = require('node:crypto');
const { nowMs, clockOffsetMs, MESSAGE, serveIpc } = require('./common');

let target = null;
let ids = [];
let connections = 64;

function init({ origin, ids: list, connections: c }) {
  const u = new URL(origin);
  target = { host: u.hostname, port: Number(u.port), hostHeader: u.host };
  ids = list;
  connections = c;
  return { ids: ids.length, connections };
}

// One keep-alive connection; `request(text)` resolves with the status code
// once the whole response (head and content-length body) has arrived.
function connect() {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: target.host, port: target.port });
    socket.setNoDelay(true);
    let buf = Buffer.alloc(0);
    let pending = null;
    const fail = (e) => {
      if (pending) pending.reject(e);
      pending = null;
    };
    socket.on('data', (chunk) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      if (!pending) return;
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.toString('latin1', 0, end);
      const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      if (!m) return fail(new Error('response without content-length'));
      const total = end + 4 + Number(m[1]);
      if (buf.length < total) return;
      const status = Number(head.slice(9, 12));
      buf = buf.subarray(total);
      const p = pending;
      pending = null;
      p.resolve(status);
    });
    socket.on('error', (e) => {
      fail(e);
      reject(e);
    });
    socket.on('close', () => fail(new Error('connection closed')));
    socket.once('connect', () =>
      resolve({
        socket,
        request(text) {
          return new Promise((res, rej) => {
            pending = { resolve: res, reject: rej };
            socket.write(text, 'latin1');
          });
        },
      }),
    );
  });
}

async function run({ startAt, durationMs }) {
  const perDaemon = new Uint32Array(ids.length);
  const status = {};
  const errors = {};
  let lat = new Float64Array(1 << 16);
  let latN = 0;
  let rr = 0;
  let accepted = 0;
  let issued = 0;
  const wait = startAt - nowMs();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  const start = nowMs();
  const deadline = start + durationMs;

  async function worker() {
    let conn = null;
    while (nowMs() < deadline) {
      const i = rr;
      rr = rr + 1 === ids.length ? 0 : rr + 1;
      const t = nowMs();
      const body = JSON.stringify({ taskId: randomUUID(), message: MESSAGE, sentAtNs: Math.round(t * 1e6) });
      const text =
        `POST /daemons/${ids[i]}/message HTTP/1.1\r\nhost: ${target.hostHeader}\r\n` +
        `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
      issued++;
      try {
        if (!conn) conn = await connect();
        const code = await conn.request(text);
        const took = nowMs() - t;
        if (latN === lat.length) {
          const bigger = new Float64Array(lat.length * 2);
          bigger.set(lat);
          lat = bigger;
        }
        lat[latN++] = took;
        status[code] = (status[code] || 0) + 1;
        if (code === 202) {
          accepted++;
          perDaemon[i]++;
        }
      } catch (e) {
        const k = String((e && (e.code || e.message)) || e);
        errors[k] = (errors[k] || 0) + 1;
        if (conn) conn.socket.destroy();
        conn = null;
      }
    }
    if (conn) conn.socket.end();
  }

  await Promise.all(Array.from({ length: connections }, worker));
  const end = nowMs();
  return { issued, accepted, status, errors, startMs: start, endMs: end, lat: lat.slice(0, latN), perDaemon };
}

serveIpc({ init, run, close: async () => ({}) });

process.on('SIGTERM', () => process.exit(0));
process.send({ type: 'ready', pid: process.pid, clockOffsetMs: clockOffsetMs() });
