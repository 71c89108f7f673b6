// A browser tab as a host behind NAT, and a client of such a host, through
// a Tubes relay (the page's own origin). The protocol is in docs/expose.md:
//
// - host: a WebSocket to /-/expose sends {"type":"register", name, secret,
//   services}; the relay answers {"type":"registered", ...}, then sends
//   {"type":"open", id, service} for each client; the host opens
//   /-/channel/ID (a WebSocket) and talks to that client on it.
// - client: a WebSocket to /-/connect/NAME is a channel to the host NAME,
//   open once the host has opened its end.
//
// From a script (or the console): tubesExpose.host({name, secret}) and
// tubesExpose.connect(name). The page below wires them to two forms.

const wsBase = () => location.origin.replace(/^http/, 'ws');

/** The first reconnection delay of a host, doubled up to 10 s. */
const RETRY_MS = 500;

/**
 * Registers this tab as the host `name` (random when null) with `secret`
 * (made by the relay when null), offering `services`. Each client's
 * channel gets `onMessage(channel, data)`; by default text comes back as
 * "echo: TEXT" and bytes as they are. The control connection comes back by
 * itself after a cut, with the same name and secret.
 *
 * Events (handle.on(event, fn)): `registered` (the relay's message),
 * `channel` ({id, service, socket}), `message` ({id, data}), `closed`
 * ({id}) for a channel, `error` (a one-line message), `disconnected`.
 */
export function host({ name = null, secret = null, services = ['chat'], onMessage } = {}) {
  const listeners = new Map();
  const emit = (event, value) => (listeners.get(event) || []).forEach((fn) => fn(value));
  const channels = new Map();
  const state = { name, secret, registered: false, stopped: false, control: null, delay: RETRY_MS };
  const reply =
    onMessage ||
    ((channel, data) => {
      if (typeof data === 'string') channel.send(`echo: ${data}`);
      else if (data.byteLength > 0) channel.send(data); // an empty one ends a direction
    });

  function openChannel(id, service) {
    const socket = new WebSocket(`${wsBase()}/-/channel/${encodeURIComponent(id)}`);
    socket.binaryType = 'arraybuffer';
    socket.onopen = () => {
      channels.set(id, socket);
      emit('channel', { id, service, socket });
    };
    socket.onmessage = (e) => {
      emit('message', { id, data: e.data });
      reply(socket, e.data);
    };
    socket.onclose = () => {
      channels.delete(id);
      emit('closed', { id });
    };
  }

  function connectControl() {
    const control = new WebSocket(`${wsBase()}/-/expose`);
    state.control = control;
    control.onopen = () => {
      const register = { type: 'register', name: state.name, secret: state.secret, services };
      control.send(JSON.stringify(register));
    };
    control.onmessage = (e) => {
      let message;
      try {
        message = JSON.parse(e.data);
      } catch {
        emit('error', `a bad control message: ${e.data}`);
        return;
      }
      if (message.type === 'registered') {
        state.name = message.name;
        if (message.secret) state.secret = message.secret;
        state.registered = true;
        state.delay = RETRY_MS;
        emit('registered', message);
      } else if (message.type === 'open') {
        openChannel(message.id, message.service);
      } else if (message.type === 'error') {
        // A refused registration is final (the name is someone else's).
        if (!state.registered) state.stopped = true;
        emit('error', message.message);
      }
    };
    control.onclose = () => {
      emit('disconnected', { registered: state.registered });
      if (state.stopped) return;
      setTimeout(connectControl, state.delay);
      state.delay = Math.min(state.delay * 2, 10_000);
    };
  }

  connectControl();
  return {
    on(event, fn) {
      listeners.set(event, [...(listeners.get(event) || []), fn]);
      return this;
    },
    get name() {
      return state.name;
    },
    get secret() {
      return state.secret;
    },
    /** Sends `data` to every connected client; returns how many. */
    sendToAll(data) {
      for (const socket of channels.values()) socket.send(data);
      return channels.size;
    },
    /** Leaves: the name is released after the relay's grace period. */
    close() {
      state.stopped = true;
      state.control?.close();
      for (const socket of channels.values()) socket.close();
    },
  };
}

/** A channel to the host `name` (its first service unless `service`). */
export function connect(name, service) {
  const query = service ? `?service=${encodeURIComponent(service)}` : '';
  const socket = new WebSocket(`${wsBase()}/-/connect/${encodeURIComponent(name)}${query}`);
  socket.binaryType = 'arraybuffer';
  return socket;
}

window.tubesExpose = { host, connect };

// ---- The page's two forms.

const $ = (id) => document.getElementById(id);

function show(list, text) {
  const item = document.createElement('li');
  item.textContent = text;
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

const describe = (data) =>
  typeof data === 'string' ? JSON.stringify(data) : `${data.byteLength} bytes`;

function wirePage() {
  let hosting = null;
  $('host-form').addEventListener('submit', (e) => {
    e.preventDefault();
    hosting?.close();
    const name = $('host-name').value.trim() || null;
    const secret = $('host-secret').value.trim() || null;
    $('host-status').textContent = 'Registering...';
    hosting = host({ name, secret })
      .on('registered', (m) => {
        $('host-name').value = m.name;
        if (m.secret) $('host-secret').value = m.secret;
        $('host-status').textContent = `Registered as ${m.name}${m.resumed ? ' (again)' : ''}.`;
        if (!$('client-name').value) $('client-name').value = m.name;
      })
      .on('channel', (c) => show($('host-log'), `client ${c.id.slice(0, 8)} connected`))
      .on('message', (m) => show($('host-log'), `client ${m.id.slice(0, 8)}: ${describe(m.data)}`))
      .on('closed', (c) => show($('host-log'), `client ${c.id.slice(0, 8)} left`))
      .on('error', (message) => {
        $('host-status').textContent = message;
      })
      .on('disconnected', () => {
        $('host-status').textContent = 'Disconnected; connecting again...';
      });
  });
  $('host-say-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('host-say').value;
    const count = hosting ? hosting.sendToAll(text) : 0;
    show($('host-log'), `to ${count} client(s): ${JSON.stringify(text)}`);
    $('host-say').value = '';
  });

  let channel = null;
  $('client-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (channel) {
      // The old channel's news no longer concerns the page.
      channel.onclose = channel.onmessage = channel.onopen = null;
      channel.close(1000);
    }
    const name = $('client-name').value.trim();
    $('client-status').textContent = `Connecting to ${name}...`;
    channel = connect(name);
    channel.onopen = () => {
      $('client-status').textContent = `Connected to ${name}.`;
    };
    channel.onmessage = (m) => show($('client-log'), `host: ${typeof m.data === 'string' ? m.data : describe(m.data)}`);
    channel.onclose = (c) => {
      $('client-status').textContent = `Closed (${c.code}${c.reason ? ` ${c.reason}` : ''}).`;
    };
  });
  $('client-say-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('client-say').value;
    if (channel?.readyState === WebSocket.OPEN) {
      channel.send(text);
      show($('client-log'), `me: ${text}`);
    }
    $('client-say').value = '';
  });
}

// Imported from another page, the module only gives its functions.
if (document.getElementById('host-form')) wirePage();
