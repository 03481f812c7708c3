/* global document, fetch, location, window */
// The demo page of the sample chat server: plain ES modules, no bundler. It follows the
// server's transport (/demo-transport.json). On `ws` the client is the package's own build
// (dist/esm/client), which the sample serves at /client/; on socket.io it is plain
// socket.io-client as the server serves it (io-client.js).
import { RateLimitedClient } from './client/index.js';

/** Messages the Flood button sends at once: twice the chat burst (30, then 15 per second). */
const FLOOD_SIZE = 60;
/** How often the page asks the server for its budgets. */
const POLL_MS = 500;
/** Rows kept in each list. */
const MAX_ROWS = 500;

const $ = (id) => document.getElementById(id);

// Every message this page sends is answered once: `chat` with `ack` (or, for an invalid
// payload, an `error` naming the chat type), `get_limits` with `limits_status` (or either
// with a rate_limit frame, which names its message by id), so each answer confirms a
// message of its event and the next chat goes as soon as the last one is through. Messages
// a closed connection leaves unanswered are reported (`undelivered`) and, by the default
// policy, given up.
const isAck = (message) => {
  const answered = message?.event === 'ack' || message?.event === 'error';
  if (answered && message.data?.messageType === 'chat') return { event: 'chat' };
  return message?.event === 'limits_status' && { event: 'get_limits' };
};

const { transport } = await fetch('demo-transport.json')
  .then((response) => response.json())
  .catch(() => ({ transport: 'ws' }));
const onSocketIo = transport === 'socket.io';
document.body.dataset.transport = transport;

/** The page's connection, and a second one that only listens: the room as another user sees it. */
async function connect() {
  if (onSocketIo) {
    const { IoChatClient, loadSocketIo } = await import('./io-client.js');
    const io = await loadSocketIo();
    $('transport-hint').textContent =
      'plain socket.io-client (served by socket.io at /socket.io/socket.io.js): no queue, no pacing';
    $('sender').textContent = 'socket.io-client, sent at once';
    return { client: new IoChatClient(io, { isAck }), room: new IoChatClient(io) };
  }
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
  return { client: new RateLimitedClient(url, { isAck }), room: new RateLimitedClient(url) };
}
const { client, room } = await connect();

let sent = 0;
let delivered = 0;
let refused = 0;
let floods = 0;
let heard = 0;
/** Rows of my chat messages not delivered yet, in send order (acks come in that order). */
const pending = [];
/** The row of each chat message, by its payload object (what the client's events report). */
const rows = new WeakMap();
let retryUntil;
let retryTotal = 0;
/** Lists with new rows, scrolled to the bottom at the next render (not once per row). */
const grown = new Set();

function time() {
  return new Date().toISOString().slice(11, 23);
}

function log(text) {
  const item = document.createElement('li');
  item.textContent = `${time()} ${text}`;
  $('log').prepend(item);
  while ($('log').childElementCount > 50) $('log').lastElementChild.remove();
}

function append(list, text) {
  const item = document.createElement('li');
  item.textContent = text;
  list.append(item);
  while (list.childElementCount > MAX_ROWS) list.firstElementChild.remove();
  grown.add(list);
  return item;
}

function sendChat(content) {
  const data = { content };
  const row = append($('mine'), content);
  row.dataset.status = 'queued';
  rows.set(data, row);
  pending.push(row);
  sent++;
  if (!client.send('chat', data)) markDropped(data);
}

function markDropped(data) {
  const row = rows.get(data);
  if (!row) return;
  row.dataset.status = 'dropped';
  const index = pending.indexOf(row);
  if (index >= 0) pending.splice(index, 1);
}

function format(ms) {
  return ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

function renderBudgets(status) {
  // A welcome sent while the store could not be read carries no status: nothing to show yet.
  if (!status) return;
  const budgets = [['global', status.global], ...Object.entries(status.types), ['expensive', status.expensive]];
  const body = $('budgets').tBodies[0];
  for (const [name, budget] of budgets) {
    let row = body.querySelector(`tr[data-tier="${name}"]`);
    if (!row) {
      row = document.createElement('tr');
      row.dataset.tier = name;
      row.innerHTML =
        '<td class="name"></td><td><div class="meter"><div></div></div></td><td class="value"></td><td class="reset"></td>';
      row.querySelector('.name').textContent = name;
      body.append(row);
    }
    const share = budget.capacity > 0 ? budget.remaining / budget.capacity : 0;
    row.querySelector('.meter').classList.toggle('low', share < 0.2);
    row.querySelector('.meter div').style.width = `${Math.round(share * 100)}%`;
    row.querySelector('.value').textContent = `${Math.floor(budget.remaining)} / ${budget.capacity}`;
    const resetIn =
      budget.resetIn < 1000 ? `${Math.ceil(budget.resetIn)} ms` : `${(budget.resetIn / 1000).toFixed(1)} s`;
    row.querySelector('.reset').textContent = budget.resetIn > 0 ? `full in ${resetIn}` : 'full';
  }
}

function renderState(state) {
  $('state').textContent = state;
  $('state').dataset.state = state;
}

function renderCountdown() {
  if (retryUntil === undefined) return;
  const left = Math.max(0, Math.ceil(retryUntil - performance.now()));
  $('countdown').textContent =
    left > 0 ? `retry in ${format(left)}` : `retry window of ${format(retryTotal)} over: the queue drains, paced`;
  $('countdown-bar').style.width = `${(100 * left) / retryTotal}%`;
  $('rate-limit').dataset.active = String(left > 0);
}

function renderStats() {
  $('sent').textContent = String(sent);
  $('queued').textContent = String(client.queued);
  $('delivered').textContent = String(delivered);
  $('refused').textContent = String(refused);
  $('dropped').textContent = String(client.dropped);
  for (const list of grown) list.scrollTop = list.scrollHeight;
  grown.clear();
  renderCountdown();
}

client.on('state', (state) => {
  renderState(state);
  log(`state: ${state}`);
});

client.on('message', (message) => {
  if (message?.event === 'ack') {
    const row = pending.shift();
    if (row) row.dataset.status = 'delivered';
    delivered++;
  } else if (message?.event === 'limits_status') {
    renderBudgets(message.data);
  } else if (message?.event === 'welcome') {
    renderBudgets(message.data.status);
  }
});

client.on('rateLimit', (notice) => {
  refused++;
  const { message, ...frame } = notice;
  $('last-frame').textContent = JSON.stringify({ event: 'rate_limit', data: frame }, null, 2);
  retryUntil = performance.now() + frame.retryAfter;
  retryTotal = frame.retryAfter;
  const row = message && rows.get(message.data);
  if (row) row.dataset.status = 'refused';
  // RateLimitedClient sends a refused message again; plain socket.io-client does not.
  if (row && onSocketIo && pending.includes(row)) pending.splice(pending.indexOf(row), 1);
  const after = onSocketIo ? 'not sent again' : 'sent again after the window';
  $('refused-message').textContent = message
    ? `Refused: ${message.event} ${JSON.stringify(message.data)} (id ${message.id ?? 'none'}), ${after}`
    : 'Refused: a message this client cannot identify';
  renderCountdown();
  log(`rate_limit ${frame.code} ${frame.messageType ?? ''}: retry after ${format(frame.retryAfter)}`);
});

client.on('drop', ({ reason, message }) => {
  if (message.event === 'chat') markDropped(message.data);
  log(`dropped ${message.event} (${reason})`);
});

client.on('undelivered', ({ reason, messages, requeued }) => {
  const again = new Set(requeued.map((message) => message.data));
  for (const message of messages) if (message.event === 'chat' && !again.has(message.data)) markDropped(message.data);
  log(`${messages.length} message(s) unanswered (${reason}), ${requeued.length} queued again`);
});

client.on('reconnect', ({ delayMs, code, policy }) => {
  log(`reconnecting in ${format(delayMs)} (close ${code}${policy ? ', waiting politely' : ''})`);
});

// socket.io only: the server's notice before it disconnects a repeat offender, then the disconnect.
client.on('rateLimitDisconnect', (notice) => {
  $('disconnect').textContent = `rate_limit_disconnect ${JSON.stringify(notice)}`;
  $('disconnect').hidden = false;
  log(`rate_limit_disconnect ${notice?.code}: ${notice?.reason}`);
});

client.on('disconnect', ({ reason, notice }) => {
  if (notice) $('disconnect').textContent += `, then disconnect (${reason})`;
  log(`disconnect: ${reason}`);
});

client.on('error', (error) => {
  if (error instanceof Error) log(`error: ${error.message}`);
});

room.on('message', (message) => {
  if (message?.event !== 'chat') return;
  append($('room'), String(message.data?.content));
  $('room-count').textContent = String(++heard);
});

$('compose').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('text').value.trim();
  if (text === '') return;
  sendChat(text);
  $('text').value = '';
});

$('flood').addEventListener('click', () => {
  const flood = ++floods;
  for (let i = 1; i <= FLOOD_SIZE; i++) sendChat(`flood ${flood}: ${i}/${FLOOD_SIZE}`);
  log(`flood ${flood}: ${FLOOD_SIZE} chat messages handed to the client`);
});

// get_limits has its own limit (10 burst, 5 per second: this poll uses 2) and skips the
// client's queue.
setInterval(() => client.sendPriority('get_limits'), POLL_MS);
setInterval(renderStats, 50);
window.addEventListener('pagehide', () => {
  client.close();
  room.close();
});
renderState(client.state);
