/*
 * skapi-realtime.js: Skapi's realtime API (connectRealtime, postRealtime,
 * joinRealtime, getRealtimeGroups, getRealtimeUsers, closeRealtime) served by
 * the skapi_channels Django app. Plain JavaScript, no build step.
 *
 * Load it with {% load skapi_channels %}{% skapi_realtime %}: the script tag's
 * data-* attributes configure the global `skapi`. The wire format is
 * docs/protocol.md; docs/client.md lists where the behaviour differs from skapi-js.
 */
(function (global) {
    'use strict';

    if (global.SkapiRealtime && global.SkapiRealtime.SkapiError) {
        return; // already loaded (the classic script, then the module build)
    }

    // ---------------------------------------------------------------- errors

    var MSG = {
        callback: 'Callback must be a function.',
        connection: 'Skapi: WebSocket connection error.',
        noConnection: 'No realtime connection. Execute connectRealtime() before this method.',
        notOpen: 'Realtime connection is not open. Try reconnecting with connectRealtime().',
        noRecipient: 'No recipient.',
        noGroup: 'No group has been joined. Otherwise "group" is required.'
    };

    // Every rejection is a SkapiError, as in skapi-js: an Error with `code`.
    class SkapiError extends Error {
        constructor(message, options) {
            super(message);
            this.name = 'SKAPI';
            this.code = (options && options.code) || 'ERROR';
        }

        toJSON() {
            return { code: this.code, message: this.message };
        }
    }

    function skapiError(code, message) {
        return new SkapiError(message, { code: code });
    }

    function rejectWith(code, message) {
        return Promise.reject(skapiError(code, message));
    }

    // ------------------------------------------------------------ form input

    function isSubmitEvent(value) {
        return typeof Event !== 'undefined' && value instanceof Event &&
            typeof HTMLFormElement !== 'undefined' && value.target instanceof HTMLFormElement;
    }

    function formOf(value) {
        if (isSubmitEvent(value)) {
            value.preventDefault(); // the form must not navigate
            return value.target;
        }
        if (typeof HTMLFormElement !== 'undefined' && value instanceof HTMLFormElement) {
            return value;
        }
        return null;
    }

    // Puts `value` at `name` ("a", "a[b]", "a[0]"); a repeated name becomes a list.
    function put(data, name, value) {
        var keys = name.split('[').map(function (k) { return k.replace(']', ''); });
        var obj = data;
        for (var i = 0; i < keys.length - 1; i++) {
            var k = keys[i];
            if (obj[k] === undefined || obj[k] === null || typeof obj[k] !== 'object') {
                obj[k] = /^\d+$/.test(keys[i + 1]) ? [] : {};
            }
            obj = obj[k];
        }
        var last = keys[keys.length - 1];
        if (Array.isArray(obj) && last === '') {
            obj.push(value);
        } else if (obj[last] === undefined) {
            obj[last] = value;
        } else if (Array.isArray(obj[last])) {
            obj[last].push(value);
        } else {
            obj[last] = [obj[last], value];
        }
    }

    // Reads a form as Skapi does: named inputs become params, numeric inputs
    // numbers, checkboxes booleans; file inputs are skipped.
    function readForm(form) {
        var data = {};
        var fields = form.querySelectorAll('input, select, textarea');
        for (var i = 0; i < fields.length; i++) {
            var el = fields[i];
            if (!el.name || el.disabled) {
                continue;
            }
            var type = (el.type || '').toLowerCase();
            if (type === 'file' || type === 'submit' || type === 'button' || type === 'reset') {
                continue;
            }
            if (type === 'number' || type === 'range') {
                if (el.value !== '') {
                    put(data, el.name, Number(el.value));
                }
            } else if (type === 'checkbox' || type === 'radio') {
                var flag = el.value === '' || el.value === 'on' || el.value === 'true';
                if (el.checked) {
                    put(data, el.name, flag ? true : el.value === 'false' ? false : el.value);
                } else if (type === 'checkbox' && (flag || el.value === 'false')) {
                    put(data, el.name, el.value === 'false');
                }
            } else if (el.tagName === 'SELECT' && el.multiple) {
                for (var j = 0; j < el.options.length; j++) {
                    if (el.options[j].selected) {
                        put(data, el.name, el.options[j].value);
                    }
                }
            } else {
                put(data, el.name, el.value);
            }
        }
        return data;
    }

    // A SubmitEvent, a form or FormData becomes a plain object; anything else
    // is returned as it is.
    function extract(value) {
        var form = formOf(value);
        if (form) {
            return readForm(form);
        }
        if (typeof FormData !== 'undefined' && value instanceof FormData) {
            var data = {};
            value.forEach(function (v, k) {
                if (typeof v === 'string') {
                    put(data, k, v);
                }
            });
            return data;
        }
        return value;
    }

    // ------------------------------------------------------------- utilities

    function cookie(name) {
        var parts = (document.cookie || '').split(';');
        for (var i = 0; i < parts.length; i++) {
            var pair = parts[i].trim();
            if (pair.substring(0, name.length + 1) === name + '=') {
                return decodeURIComponent(pair.substring(name.length + 1));
            }
        }
        return null;
    }

    function sortedJSON(value) {
        if (Array.isArray(value)) {
            return '[' + value.map(sortedJSON).join(',') + ']';
        }
        if (value && typeof value === 'object') {
            return '{' + Object.keys(value).sort().map(function (k) {
                return JSON.stringify(k) + ':' + sortedJSON(value[k]);
            }).join(',') + '}';
        }
        return JSON.stringify(value === undefined ? null : value);
    }

    function has(obj, key) {
        return Object.prototype.hasOwnProperty.call(obj, key);
    }

    function withCid(cid) {
        return cid === null || cid === undefined || cid === '' ? null : 'cid:' + cid;
    }

    var State = { CLOSED: 'closed', CONNECTING: 'connecting', OPEN: 'open', RECONNECTING: 'reconnecting' };

    var DEFAULTS = {
        socketPath: '/ws/realtime/',
        groupsUrl: '/realtime/groups/',
        usersUrl: '/realtime/users/',
        tokenUrl: '/realtime/token/',
        auth: 'cookie', // or 'token': the socket gets ?token= from tokenUrl
        keepAlive: 15000, // ms between keepAlive frames
        reconnectAttempts: 10,
        reconnectDelay: 500, // first backoff step, ms; doubles each attempt
        reconnectMaxDelay: 10000,
        ackTimeout: 30000, // ms to wait for the server's answer to a frame
        csrfCookie: 'csrftoken',
        userId: null, // this page's user_id, shown as `skapi.user`
        iceServers: null // RTCIceServer list for calls; none: host candidates only
    };

    // Close codes after which reconnecting cannot help (docs/protocol.md section 13):
    // the event the callback gets instead.
    var FINAL_CLOSES = {
        4000: { code: 'CLOSED_BY_SERVER', message: 'Skapi: the server closed the connection.' },
        4001: { code: 'REVOKED', message: 'Skapi: the login behind the connection has ended. Log in again.' },
        4008: { code: 'FLOODING', message: 'Skapi: the connection was closed for sending too many frames.' }
    };
    var REFUSED = { code: 'REFUSED', message: 'Skapi: the server refused the connection.' };

    // keepAlive ticks come from a Worker where the page allows one: browsers
    // throttle a background tab's timers to once a minute or less.
    var KEEPALIVE_WORKER = 'var t=null;onmessage=function(e){clearInterval(t);' +
        'if(e.data>0){t=setInterval(function(){postMessage(0);},e.data);}};';
    var keepAliveUrl = null;

    function keepAliveWorker() {
        if (typeof Worker === 'undefined' || typeof Blob === 'undefined' || typeof URL === 'undefined') {
            return null;
        }
        try {
            if (keepAliveUrl === null) {
                keepAliveUrl = URL.createObjectURL(new Blob([KEEPALIVE_WORKER], { type: 'text/javascript' }));
            }
            return new Worker(keepAliveUrl); // a CSP without blob: workers throws here
        } catch (err) {
            return null;
        }
    }

    // ---------------------------------------------------------------- client

    function SkapiRealtime(options) {
        var config = {};
        Object.keys(DEFAULTS).forEach(function (k) {
            var v = options && options[k] !== undefined && options[k] !== null ? options[k] : DEFAULTS[k];
            config[k] = v;
        });
        this.config = Object.freeze(config);
        this._state = State.CLOSED;
        this._socket = null;
        this._callback = null;
        this._opening = null; // the promise connectRealtime returns
        this._group = null; // the joined group, rejoined after a reconnect
        this._nextId = 1;
        this._pending = {}; // frame id -> {resolve, reject, timer}
        this._keepAliveTimer = null;
        this._reconnectTimer = null;
        this._attempt = 0;
        this._openedAt = 0;
        this._generation = 0;
        this._authFailed = false;
        this._refusals = 0; // handshakes refused in a row while the server answers HTTP
        this._gaveUp = false; // reconnecting gave up: resume when the page is back
        this._keepAlive = null; // {kind: 'worker' | 'timer', stop()}
        this._startKeyHistory = {};
        this._inflight = {};
        this._streams = { group: null, private: null }; // history positions (see below)
        this._listenForResume();
    }

    SkapiRealtime.State = State;

    Object.defineProperty(SkapiRealtime.prototype, 'state', {
        get: function () { return this._state; }
    });

    Object.defineProperty(SkapiRealtime.prototype, 'group', {
        get: function () { return this._group; }
    });

    // `{user_id}` of the page's user, as skapi-js's `skapi.user` (only the id).
    Object.defineProperty(SkapiRealtime.prototype, 'user', {
        get: function () {
            var id = this.config.userId;
            return id === null || id === undefined || id === '' ? null : { user_id: String(id) };
        }
    });

    // `callback`: the one to call instead of the current one (a close event
    // belongs to the callback of the connection that closed).
    // `extra`: more fields (the functions of an `rtc:incoming` event).
    SkapiRealtime.prototype._emit = function (type, message, data, callback, extra) {
        data = data || {};
        var event = {
            type: type,
            message: message,
            sender: has(data, '#user_id') ? data['#user_id'] : null,
            sender_cid: withCid(data['#scid']),
            sender_rid: has(data, '#srid') ? data['#srid'] : null,
            code: has(data, '#code') ? data['#code'] : null
        };
        if (has(data, '#missed')) {
            event.missed = data['#missed'];
        }
        if (has(data, 'close_code')) {
            event.close_code = data.close_code;
        }
        if (extra) {
            Object.keys(extra).forEach(function (k) { event[k] = extra[k]; });
        }
        if (data['#replay'] === true) {
            event.replay = true;
        }
        if (event.message === undefined) {
            delete event.message;
        }
        callback = callback || this._callback;
        if (typeof callback === 'function') {
            try {
                callback(event);
            } catch (err) {
                console.error('skapi: the realtime callback threw', err);
            }
        }
    };

    SkapiRealtime.prototype._socketUrl = function () {
        var self = this;
        var scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
        var path = this.config.socketPath;
        if (path.charAt(0) !== '/') {
            path = '/' + path;
        }
        var url = scheme + '//' + location.host + path;
        if (this.config.auth !== 'token') {
            return Promise.resolve(url);
        }
        return this._post(this.config.tokenUrl, {}).then(function (answer) {
            return url + (url.indexOf('?') < 0 ? '?' : '&') + 'token=' + encodeURIComponent(answer.token);
        }, function (err) {
            self._authFailed = err && (err.status === 401 || err.status === 403);
            throw err;
        });
    };

    // Opens one socket; resolves with it once open, rejects if it closes first
    // or if closeRealtime() is called meanwhile.
    SkapiRealtime.prototype._open = function () {
        var self = this;
        var generation = this._generation;
        var aborted = function () { return self._generation !== generation; };
        return this._socketUrl().then(function (url) {
            if (aborted()) {
                throw new Error('closed');
            }
            return new Promise(function (resolve, reject) {
                var socket = new WebSocket(url);
                var opened = false;
                self._socket = socket;
                socket.onopen = function () {
                    if (aborted() || self._socket !== socket) {
                        socket.close(1000);
                        reject(new Error('closed'));
                        return;
                    }
                    opened = true;
                    self._onOpen(socket);
                    resolve(socket);
                };
                socket.onmessage = function (event) {
                    if (self._socket === socket) {
                        self._onFrame(event.data);
                    }
                };
                socket.onclose = function (event) {
                    if (!opened) {
                        reject(event);
                    }
                    if (self._socket !== socket) {
                        return;
                    }
                    self._socket = null;
                    self._stopKeepAlive();
                    self._failPending(skapiError('INVALID_REQUEST', MSG.notOpen));
                    if (opened) {
                        self._onLost(event.code);
                    }
                };
            });
        });
    };

    SkapiRealtime.prototype._onOpen = function (socket) {
        var self = this;
        this._state = State.OPEN;
        this._openedAt = Date.now();
        this._refusals = 0;
        this._gaveUp = false;
        this._opening = Promise.resolve(socket);
        this._startKeepAlive(socket);
        this._resumePrivate();
        if (this._group === null) {
            this._emit('success', 'Connected to WebSocket server.');
            return;
        }
        // Rejoin before anything else is sent on the new socket, and report
        // success once the group is joined again.
        var group = this._group;
        this._request(this._joinFrame(group, true)).then(function (ack) {
            self._joined(group, ack, true);
            self._emit('success', 'Connected to WebSocket server.');
        }, function (err) {
            if (self._socket !== socket) {
                return; // lost again; the next reconnect rejoins
            }
            if (self._group === group) {
                self._group = null;
            }
            self._emit('success', 'Connected to WebSocket server.');
            self._emit('error', err.message, { '#code': err.code });
        });
    };

    // An open socket closed without closeRealtime(): reconnect with backoff,
    // unless the server said that reconnecting cannot help.
    SkapiRealtime.prototype._onLost = function (closeCode) {
        if (has(FINAL_CLOSES, closeCode)) {
            this._stop(FINAL_CLOSES[closeCode], closeCode);
            return;
        }
        if (Date.now() - this._openedAt >= this.config.reconnectMaxDelay) {
            this._attempt = 0; // it was up for a while: a new outage, a new budget
        }
        this._state = State.RECONNECTING;
        this._scheduleReconnect();
    };

    SkapiRealtime.prototype._scheduleReconnect = function () {
        var self = this;
        if (this._attempt >= this.config.reconnectAttempts || this._authFailed) {
            this._giveUp();
            return;
        }
        this._attempt += 1;
        var attempt = this._attempt;
        var step = Math.min(this.config.reconnectMaxDelay, this.config.reconnectDelay * Math.pow(2, attempt - 1));
        var delay = step / 2 + Math.random() * step / 2;
        this._emit('reconnect', 'Reconnecting to WebSocket server...' + attempt);
        this._reconnectTimer = setTimeout(function () {
            self._reconnectTimer = null;
            if (self._state === State.RECONNECTING) {
                self._reconnect().catch(function () {});
            }
        }, delay);
    };

    // One reconnection attempt; a failed one schedules the next, or stops when
    // the handshake was refused.
    SkapiRealtime.prototype._reconnect = function () {
        var self = this;
        var generation = this._generation;
        return this._open().catch(function (err) {
            return self._refused().then(function (refused) {
                if (self._generation === generation && self._state === State.RECONNECTING) {
                    if (refused) {
                        self._stop(REFUSED, null);
                    } else if (!self._reconnectTimer) {
                        self._scheduleReconnect();
                    }
                }
                throw err;
            });
        });
    };

    // Whether a socket that did not open was refused rather than unreachable:
    // browsers show both as close code 1006, so ask the token URL. 401 (logged
    // out) is a refusal; an answer twice in a row means the server is up and
    // still refuses the handshake; no answer means it is away.
    SkapiRealtime.prototype._refused = function () {
        var self = this;
        if (this._authFailed) {
            return Promise.resolve(true);
        }
        return this._post(this.config.tokenUrl, {}).then(function () {
            self._refusals += 1;
            return self._refusals >= 2;
        }, function (err) {
            if (err && err.status === 401) {
                return true;
            }
            if (err && err.status) {
                self._refusals += 1;
                return self._refusals >= 2;
            }
            self._refusals = 0;
            return false;
        });
    };

    SkapiRealtime.prototype._giveUp = function () {
        this._reset(true);
        this._gaveUp = true; // the page coming back (online, visible) tries again
        this._emit('error', MSG.connection);
    };

    // Closed for good by the server (a close code, a refused handshake): no
    // retrying, and the callback is told why.
    SkapiRealtime.prototype._stop = function (reason, closeCode) {
        this._reset(true);
        this._emit('error', reason.message, { '#code': reason.code, close_code: closeCode });
    };

    // `keepGroup`: remember the joined group, so that connectRealtime() rejoins
    // it; only closeRealtime() forgets it.
    SkapiRealtime.prototype._reset = function (keepGroup) {
        this._generation += 1; // anything still opening is abandoned
        this._state = State.CLOSED;
        this._opening = null;
        if (!keepGroup) {
            this._group = null;
            this._streams = { group: null, private: null };
        }
        this._attempt = 0;
        this._refusals = 0;
        this._gaveUp = false;
        this._authFailed = false;
        this._stopKeepAlive();
        if (this._reconnectTimer) {
            clearTimeout(this._reconnectTimer);
            this._reconnectTimer = null;
        }
    };

    SkapiRealtime.prototype._startKeepAlive = function (socket) {
        var self = this;
        var interval = this.config.keepAlive;
        this._stopKeepAlive();
        var tick = function () {
            if (self._socket === socket && socket.readyState === 1) {
                socket.send(JSON.stringify({ action: 'keepAlive' }));
            }
        };
        var timer = function () {
            var id = setInterval(tick, interval);
            return { kind: 'timer', stop: function () { clearInterval(id); } };
        };
        var worker = keepAliveWorker();
        if (worker === null) {
            this._keepAlive = timer();
            return;
        }
        var keepAlive = {
            kind: 'worker',
            stop: function () { worker.terminate(); }
        };
        worker.onmessage = tick;
        worker.onerror = function () { // refused after all (CSP): the main thread it is
            worker.terminate();
            if (self._keepAlive === keepAlive) {
                self._keepAlive = timer();
            }
        };
        worker.postMessage(interval);
        this._keepAlive = keepAlive;
    };

    SkapiRealtime.prototype._stopKeepAlive = function () {
        if (this._keepAlive) {
            this._keepAlive.stop();
            this._keepAlive = null;
        }
    };

    // skapi-js tries again when the tab becomes visible; so do we, and when the
    // browser is back online: at once while reconnecting, and after giving up.
    SkapiRealtime.prototype._listenForResume = function () {
        var self = this;
        if (typeof window === 'undefined' || !window.addEventListener) {
            return;
        }
        var resume = function () {
            if (typeof document !== 'undefined' && document.visibilityState === 'hidden') {
                return;
            }
            self._resume();
        };
        window.addEventListener('online', resume);
        if (typeof document !== 'undefined') {
            document.addEventListener('visibilitychange', resume);
        }
    };

    SkapiRealtime.prototype._resume = function () {
        if (this._state === State.RECONNECTING && this._reconnectTimer) {
            clearTimeout(this._reconnectTimer);
            this._reconnectTimer = null;
            this._reconnect().catch(function () {});
        } else if (this._state === State.CLOSED && this._gaveUp && typeof this._callback === 'function') {
            this.connectRealtime(this._callback).catch(function () {});
        }
    };

    // Sends a frame with a fresh id; settles on the server's ack or error.
    SkapiRealtime.prototype._request = function (frame) {
        var self = this;
        var socket = this._socket;
        if (!socket || socket.readyState !== 1) {
            return rejectWith('INVALID_REQUEST', MSG.notOpen);
        }
        var id = this._nextId++;
        frame.id = id;
        var text;
        try {
            text = JSON.stringify(frame);
        } catch (err) { // a cycle, a BigInt: nothing is sent, nothing waits
            return rejectWith('INVALID_PARAMETER', 'The message cannot be sent as JSON: ' + err.message);
        }
        return new Promise(function (resolve, reject) {
            var timer = setTimeout(function () {
                delete self._pending[id];
                reject(skapiError('ERROR', MSG.connection));
            }, self.config.ackTimeout);
            self._pending[id] = { resolve: resolve, reject: reject, timer: timer };
            socket.send(text);
        });
    };

    SkapiRealtime.prototype._settle = function (id, error, data) {
        var entry = this._pending[id];
        if (!entry) {
            return false;
        }
        delete this._pending[id];
        clearTimeout(entry.timer);
        if (error) {
            entry.reject(error);
        } else {
            entry.resolve(data); // the ack frame (a join's carries #epoch, #offset)
        }
        return true;
    };

    SkapiRealtime.prototype._failPending = function (error) {
        var ids = Object.keys(this._pending);
        for (var i = 0; i < ids.length; i++) {
            this._settle(ids[i], error);
        }
    };

    SkapiRealtime.prototype._onFrame = function (text) {
        var data;
        try {
            data = JSON.parse(text);
        } catch (err) {
            return;
        }
        if (!data || typeof data !== 'object') {
            return;
        }
        if (has(data, '#ack')) {
            this._settle(data['#ack'], null, data);
        } else if (has(data, '#error')) {
            var id = data['#id'];
            var error = skapiError(data['#code'] || 'ERROR', data['#error']);
            if (id === null || id === undefined || !this._settle(id, error)) {
                this._emit('error', data['#error'], data);
            }
        } else if (has(data, '#message')) {
            if (this._keptFrame('group', data)) {
                this._emit('message', data['#message'], data);
            }
        } else if (has(data, '#private')) {
            if (this._keptFrame('private', data)) {
                this._emit('private', data['#private'], data);
            }
        } else if (has(data, '#notice')) {
            this._emit('notice', data['#notice'], data);
        } else if (has(data, '#rtc')) {
            this._onRtc(data);
        }
    };

    // Waits for a connectRealtime() still opening; false when there is none.
    SkapiRealtime.prototype._connection = function () {
        if (this._state === State.CLOSED || !this._opening) {
            return Promise.resolve(false);
        }
        if (this._state !== State.CONNECTING) {
            return Promise.resolve(true);
        }
        return this._opening.then(function () { return true; }, function () { return false; });
    };

    // ------------------------------------------- history and recovery (begin)
    // docs/protocol.md section 11. `_streams.group` is {group, epoch, offset} of the
    // joined group's stream, `_streams.private` {epoch, offset} of the user's private
    // stream: the last offset given to the callback. After a reconnect the group is
    // rejoined with `since` and the private stream resumed, so what was said while
    // the socket was down is replayed (`replay: true`); when it cannot be, the
    // callback gets {type: 'error', code: 'MISSED_MESSAGES'}.

    // Whether a #message / #private frame is new to the callback (and note it).
    SkapiRealtime.prototype._keptFrame = function (kind, data) {
        var offset = data['#offset'];
        if (typeof offset !== 'number') {
            return true; // history is off on the server
        }
        var stream = this._streams[kind];
        if (kind === 'group' && (!stream || stream.group !== data['#srid'])) {
            if (data['#srid'] !== this._group) {
                return true; // a group left, still draining
            }
            stream = this._streams.group = { group: this._group, epoch: null, offset: 0 };
        } else if (kind === 'private' && !stream) {
            stream = this._streams['private'] = { epoch: null, offset: 0 };
        }
        if (offset <= stream.offset && stream.epoch !== null) {
            return false; // had already (a replay overlapping what came live)
        }
        stream.offset = offset;
        return true;
    };

    SkapiRealtime.prototype._joinFrame = function (group, rejoining) {
        var frame = { action: 'joinRoom', rid: group };
        var stream = this._streams.group;
        if (rejoining && stream && stream.group === group && stream.epoch !== null) {
            frame.since = { offset: stream.offset, epoch: stream.epoch };
        }
        return frame;
    };

    // A join's ack says where the group's stream stands.
    SkapiRealtime.prototype._joined = function (group, ack, rejoining) {
        if (group === null || !ack || typeof ack['#epoch'] !== 'string') {
            if (group === null || (ack && !has(ack, '#epoch'))) {
                this._streams.group = null;
            }
            this._missedUnlessRecovered(ack, 'Messages of group "' + group + '"');
            return;
        }
        var stream = this._streams.group;
        var offset = ack['#offset'];
        if (stream && stream.group === group && stream.epoch === ack['#epoch'] &&
            stream.offset > offset) {
            offset = stream.offset;
        }
        this._streams.group = { group: group, epoch: ack['#epoch'], offset: offset };
        if (rejoining) {
            this._missedUnlessRecovered(ack, 'Messages of group "' + group + '"');
        }
    };

    SkapiRealtime.prototype._resumePrivate = function () {
        var self = this;
        var stream = this._streams['private'];
        var frame = { action: 'resume' };
        var resuming = !!(stream && stream.epoch !== null);
        if (resuming) {
            frame.since = { offset: stream.offset, epoch: stream.epoch };
        }
        this._request(frame).then(function (ack) {
            if (!ack || typeof ack['#epoch'] !== 'string') {
                self._streams['private'] = null;
            } else {
                var now = self._streams['private'];
                var offset = ack['#offset'];
                if (now && now.epoch === ack['#epoch'] && now.offset > offset) {
                    offset = now.offset;
                }
                self._streams['private'] = { epoch: ack['#epoch'], offset: offset };
            }
            if (resuming) {
                self._missedUnlessRecovered(ack, 'Private messages');
            }
        }, function () {}); // a server without resume, or the socket lost again
    };

    SkapiRealtime.prototype._missedUnlessRecovered = function (ack, what) {
        if (ack && ack['#recovered'] === false) {
            this._emit('error', what + ' sent while the connection was down could not ' +
                'be recovered; reload what is shown.',
                { '#code': 'MISSED_MESSAGES' });
        }
    };
    // --------------------------------------------- history and recovery (end)

    // ------------------------------------------------------------ public API

    SkapiRealtime.prototype.connectRealtime = function (cb) {
        var self = this;
        if (typeof cb !== 'function') {
            return rejectWith('INVALID_REQUEST', MSG.callback);
        }
        this._callback = cb; // a second call replaces the callback, as in skapi-js
        if (this._state === State.RECONNECTING) {
            // Try at once instead of waiting for the next backoff step.
            if (this._reconnectTimer) {
                clearTimeout(this._reconnectTimer);
                this._reconnectTimer = null;
            }
            return this._reconnect().catch(function () {
                throw skapiError('ERROR', MSG.connection);
            });
        }
        if (this._opening) {
            return this._opening;
        }
        this._state = State.CONNECTING;
        this._gaveUp = false;
        var generation = this._generation;
        var opening = this._open().catch(function () {
            if (self._generation === generation) {
                self._reset(true);
                self._emit('error', MSG.connection);
            }
            throw skapiError('ERROR', MSG.connection);
        });
        this._opening = opening;
        return opening;
    };

    SkapiRealtime.prototype.postRealtime = function (message, recipient) {
        var self = this;
        var content = extract(message); // also stops a submitted form navigating
        return this._connection().then(function (connected) {
            if (!connected) {
                throw skapiError('INVALID_REQUEST', MSG.noConnection);
            }
            if (!recipient) {
                throw skapiError('INVALID_REQUEST', MSG.noRecipient);
            }
            var frame = recipient === self._group
                ? { action: 'broadcast', rid: recipient, content: content === undefined ? null : content }
                : { action: 'sendMessage', uid: String(recipient), content: content === undefined ? null : content };
            return self._request(frame).then(function () {
                return { type: 'success', message: 'Message sent.' };
            });
        });
    };

    SkapiRealtime.prototype.joinRealtime = function (params) {
        var self = this;
        params = extract(params) || {};
        return this._connection().then(function (connected) {
            if (!connected) {
                throw skapiError('INVALID_REQUEST', MSG.noConnection);
            }
            var group = params.group === undefined || params.group === '' ? null : params.group;
            if (group !== null && typeof group !== 'string') {
                throw skapiError('INVALID_PARAMETER', '"group" must be a string | null.');
            }
            if (group === null && self._group === null) {
                return { type: 'success', message: 'Left realtime message group.' };
            }
            var last = params.last;
            if (last !== undefined && last !== null &&
                (typeof last !== 'number' || last % 1 !== 0 || last < 1)) {
                throw skapiError('INVALID_PARAMETER', '"last" must be a positive integer.');
            }
            var previous = self._group;
            self._group = group; // messages sent from now on go to the new group
            var frame = self._joinFrame(group, false);
            if (group !== null && last !== undefined && last !== null) {
                frame.last = last;
            }
            return self._request(frame).then(function (ack) {
                self._joined(group, ack, false);
                return {
                    type: 'success',
                    message: group === null ? 'Left realtime message group.' : 'Joined realtime message group: "' + group + '".'
                };
            }, function (err) {
                if (self._group === group) {
                    self._group = previous;
                }
                throw err;
            });
        });
    };

    SkapiRealtime.prototype.closeRealtime = function () {
        var self = this;
        var socket = this._socket;
        var callback = this._callback; // a connectRealtime(cb2) right after gets no old event
        var hadConnection = this._state !== State.CLOSED;
        this.closeRTC({ close_all: true }); // the hang-ups go out before the socket closes
        this._socket = null;
        this._reset(false);
        this._failPending(skapiError('INVALID_REQUEST', MSG.noConnection));
        if (!hadConnection) {
            return Promise.resolve(null);
        }
        return new Promise(function (resolve) {
            var finished = false;
            var done = function () {
                if (!finished) {
                    finished = true;
                    self._emit('close', 'WebSocket connection closed.', null, callback);
                    resolve(null);
                }
            };
            if (!socket || socket.readyState === 3) {
                done();
                return;
            }
            var timer = setTimeout(done, 3000);
            // A listener besides onclose: a socket still opening keeps its own
            // handler, which settles the pending connectRealtime().
            socket.addEventListener('close', function () {
                clearTimeout(timer);
                done();
            });
            socket.close(1000);
        });
    };

    SkapiRealtime.prototype.getRealtimeGroups = function (params, fetchOptions) {
        params = extract(params);
        if (!params) {
            params = { searchFor: 'group' };
        }
        var query = {};
        var searchFor = params.searchFor || 'group';
        if (searchFor !== 'group' && searchFor !== 'number_of_users') {
            return rejectWith('INVALID_PARAMETER', '"searchFor" should be either "group" or "number_of_users".');
        }
        query.searchFor = searchFor;
        var value = params.value;
        if (value !== undefined && value !== null && value !== '') {
            if (searchFor === 'number_of_users' && typeof value !== 'number') {
                return rejectWith('INVALID_PARAMETER', '"value" must be a number.');
            }
            if (searchFor === 'group' && typeof value !== 'string') {
                return rejectWith('INVALID_PARAMETER', '"value" must be a string.');
            }
            query.value = value;
            var hasRange = params.range !== undefined && params.range !== null && params.range !== '';
            if (hasRange) {
                if (typeof params.range !== typeof value) {
                    return rejectWith('INVALID_PARAMETER', '"range" must be a ' + typeof value + '.');
                }
                query.range = params.range; // a range drops the condition, as in skapi-js
            } else {
                query.condition = params.condition || '=';
            }
        }
        return this._list(this.config.groupsUrl, query, fetchOptions);
    };

    SkapiRealtime.prototype.getRealtimeUsers = function (params, fetchOptions) {
        params = extract(params) || {};
        var query = {};
        var group = params.group === undefined || params.group === null || params.group === '' ? this._group : params.group;
        if (group === null || group === undefined) {
            return rejectWith('INVALID_REQUEST', MSG.noGroup);
        }
        query.group = String(group);
        if (params.user_id !== undefined && params.user_id !== null && params.user_id !== '') {
            query.user_id = String(params.user_id);
        }
        return this._list(this.config.usersUrl, query, fetchOptions).then(function (res) {
            res.list = res.list.map(function (item) {
                var cid = withCid(item.cid);
                return { user_id: item.user_id, connection_id: cid, cid: cid };
            });
            return res;
        });
    };

    // Paged listing as skapi-js pages: each query keeps the startKeys it was
    // given; fetchMore continues after the last one.
    SkapiRealtime.prototype._list = function (url, query, fetchOptions) {
        var self = this;
        var options = fetchOptions || {};
        var body = Object.assign({}, query);
        if (has(options, 'limit') && options.limit !== undefined) {
            if (typeof options.limit !== 'number') {
                return rejectWith('INVALID_REQUEST', 'Fetch limit should be a number.');
            }
            if (options.limit > 1000) {
                return rejectWith('INVALID_REQUEST', 'Fetch limit should be below 1000.');
            }
            body.limit = options.limit;
        }
        if (has(options, 'ascending') && options.ascending !== undefined) {
            if (typeof options.ascending !== 'boolean') {
                return rejectWith('INVALID_PARAMETER', '"ascending" should be a boolean.');
            }
            body.ascending = options.ascending;
        }
        var key = url + '/' + sortedJSON(body);
        var fetchMore = !!options.fetchMore;
        var startKey = options.startKey;
        if (startKey === 'start') {
            startKey = undefined;
            fetchMore = false;
        }
        if (!fetchMore) {
            delete this._startKeyHistory[key];
        }
        var history = this._startKeyHistory[key];
        if (startKey !== undefined && startKey !== null) {
            body.startKey = startKey;
        } else if (fetchMore && history && history.length) {
            var last = history[history.length - 1];
            if (last === 'end') {
                return Promise.resolve({ list: [], startKey: 'end', endOfList: true, startKeyHistory: history });
            }
            body.startKey = JSON.parse(last);
        }
        var requestKey = key + '#' + sortedJSON(body.startKey === undefined ? null : body.startKey);
        if (this._inflight[requestKey]) {
            return this._inflight[requestKey];
        }
        var promise = this._post(url, body).then(function (answer) {
            var list = self._startKeyHistory[key] || (self._startKeyHistory[key] = []);
            if (answer.startKey !== undefined && answer.startKey !== null) {
                var mark = answer.startKey === 'end' ? 'end' : JSON.stringify(answer.startKey);
                if (list.indexOf(mark) < 0) {
                    list.push(mark);
                }
            }
            return {
                list: answer.list || [],
                startKey: answer.startKey,
                endOfList: !!answer.endOfList,
                startKeyHistory: list
            };
        });
        this._inflight[requestKey] = promise;
        var clear = function () { delete self._inflight[requestKey]; };
        promise.then(clear, clear);
        return promise;
    };

    SkapiRealtime.prototype._post = function (url, body) {
        var headers = { 'Content-Type': 'application/json', 'Accept': 'application/json' };
        var csrf = cookie(this.config.csrfCookie);
        if (csrf) {
            headers['X-CSRFToken'] = csrf;
        }
        return fetch(url, {
            method: 'POST',
            credentials: 'same-origin',
            headers: headers,
            body: JSON.stringify(body)
        }).then(function (response) {
            return response.text().then(function (text) {
                var answer = null;
                try {
                    answer = text ? JSON.parse(text) : null;
                } catch (err) {
                    answer = null;
                }
                if (response.ok && answer && typeof answer === 'object') {
                    return answer;
                }
                var error = skapiError(
                    (answer && answer.code) || 'ERROR',
                    (answer && (answer.message || answer.error)) || response.statusText || ('HTTP ' + response.status)
                );
                Object.defineProperty(error, 'status', { value: response.status, enumerable: false });
                throw error;
            });
        }, function () {
            throw skapiError('ERROR', 'Network error');
        });
    };

    // ------------------------------------------------------------------ calls

    // WebRTC calls as skapi-js makes them: the realtime socket carries the
    // signalling (`rtc` frames: sdpoffer, sdpanswer, candidate, pickup,
    // hungup) to one connection; media and data go peer to peer.

    var CHANNEL_PRESETS = {
        'text-chat': { ordered: true, maxRetransmits: 10, protocol: 'text-chat' },
        'file-transfer': { ordered: false, maxPacketLifeTime: 3000, protocol: 'file-transfer' },
        'video-chat': { ordered: true, maxRetransmits: 10, protocol: 'video-chat' },
        'voice-chat': { ordered: true, maxRetransmits: 10, protocol: 'voice-chat' },
        'gaming': { ordered: false, maxPacketLifeTime: 100, protocol: 'gaming' }
    };
    var DEFAULT_CHANNELS = [{ ordered: true, maxPacketLifeTime: 10, protocol: 'default' }];

    function now() {
        return new Date().toISOString();
    }

    function checkCid(cid) {
        if (typeof cid !== 'string') {
            throw skapiError('INVALID_PARAMETER', '"cid" should be type: <string>.');
        }
        if (cid.slice(0, 4) !== 'cid:' || cid.length < 5) {
            throw skapiError('INVALID_PARAMETER', '"cid" should be a valid connection id.');
        }
        return cid;
    }

    function checkMedia(media) {
        if (media && !(typeof MediaStream !== 'undefined' && media instanceof MediaStream) &&
                (media.video || media.audio) && !global.isSecureContext) {
            throw skapiError('INVALID_REQUEST', 'Media stream is only supported on either localhost or https.');
        }
    }

    // A MediaStream as given, the camera/microphone, or (neither asked for) a
    // 1x1 canvas track, as skapi-js does. `own`: ours to stop when the call ends.
    function openMedia(media) {
        if (typeof MediaStream !== 'undefined' && media instanceof MediaStream) {
            return Promise.resolve({ stream: media, own: false });
        }
        if (!media.video && !media.audio) {
            var canvas = document.createElement('canvas');
            canvas.width = 1;
            canvas.height = 1;
            var stream = new MediaStream();
            stream.addTrack(canvas.captureStream().getVideoTracks()[0]);
            return Promise.resolve({ stream: stream, own: true });
        }
        return navigator.mediaDevices.getUserMedia(media).then(function (stream) {
            return { stream: stream, own: true };
        });
    }

    SkapiRealtime.prototype._iceServers = function (ice) {
        if (typeof ice === 'string' && ice) {
            return [{ urls: ice }];
        }
        if (Array.isArray(ice)) {
            return ice;
        }
        return this.config.iceServers || [];
    };

    SkapiRealtime.prototype._signal = function (cid, content) {
        return this._request({ action: 'rtc', uid: cid, content: content });
    };

    SkapiRealtime.prototype._call = function (cid) {
        var calls = this._calls || (this._calls = {});
        if (!calls[cid]) {
            calls[cid] = {
                cid: cid,
                userId: null, // the other side's user_id, once a frame of theirs came
                peer: null,
                channels: {},
                callback: null,
                media: null,
                ownMedia: false,
                ringing: null, // caller: settles `connection` on pickup or hungup
                incoming: false, // callee: rung and not answered yet
                offers: [], // sdp offers that came before the answer
                candidates: [], // candidates that came before the remote description
                queue: Promise.resolve() // signalling of this call, handled in order
            };
        }
        return calls[cid];
    };

    SkapiRealtime.prototype._rtcEmit = function (call, event) {
        if (typeof call.callback === 'function') {
            try {
                call.callback(event);
            } catch (err) {
                console.error('skapi: the RTC callback threw', err);
            }
        }
    };

    SkapiRealtime.prototype._watchPeer = function (call, withNegotiation) {
        var self = this;
        var peer = call.peer;
        var emit = function (event) { self._rtcEmit(call, event); };
        peer.ontrack = function (event) {
            emit({ type: 'track', target: peer, timeStamp: event.timeStamp, streams: event.streams, track: event.track });
        };
        peer.onicecandidate = function (event) {
            if (!event.candidate) {
                emit({ type: 'icecandidateend', target: peer, timestamp: now() });
                return;
            }
            var c = event.candidate;
            emit({
                type: 'icecandidate', target: peer, timestamp: now(), candidate: c.candidate,
                sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex, usernameFragment: c.usernameFragment,
                protocol: c.protocol, gatheringState: peer.iceGatheringState, connectionState: peer.iceConnectionState
            });
            self._signal(call.cid, { candidate: c.toJSON ? c.toJSON() : c }).catch(function () {});
        };
        peer.onicecandidateerror = function (event) {
            emit({
                type: 'icecandidateerror', target: peer, timestamp: now(), errorCode: event.errorCode,
                errorText: event.errorText, url: event.url, hostCandidate: event.hostCandidate,
                gatheringState: peer.iceGatheringState, connectionState: peer.iceConnectionState
            });
        };
        peer.oniceconnectionstatechange = function () {
            emit({
                type: 'iceconnectionstatechange', target: peer, timestamp: now(), state: peer.iceConnectionState,
                gatheringState: peer.iceGatheringState, signalingState: peer.signalingState
            });
        };
        peer.onicegatheringstatechange = function () {
            emit({
                type: 'icegatheringstatechange', target: peer, timestamp: now(), state: peer.iceGatheringState,
                connectionState: peer.iceConnectionState, signalingState: peer.signalingState
            });
        };
        peer.onsignalingstatechange = function () {
            emit({
                type: 'signalingstatechange', target: peer, timestamp: now(), state: peer.signalingState,
                connectionState: peer.iceConnectionState, gatheringState: peer.iceGatheringState
            });
        };
        peer.onconnectionstatechange = function () {
            emit({
                type: 'connectionstatechange', target: peer, timestamp: now(), state: peer.connectionState,
                iceState: peer.iceConnectionState, signalingState: peer.signalingState
            });
            var state = peer.connectionState;
            if (state === 'disconnected' || state === 'failed' || state === 'closed') {
                self._endCall(call.cid, true, null);
            }
        };
        // The caller renegotiates (a track added later) once the call is up.
        peer.onnegotiationneeded = !withNegotiation ? null : function () {
            if (call.ringing) {
                return; // the first offer is sent by connectRTC itself
            }
            self._offer(call).catch(function () {});
            emit({
                type: 'negotiationneeded', target: peer, timestamp: now(), signalingState: peer.signalingState,
                connectionState: peer.iceConnectionState, gatheringState: peer.iceGatheringState
            });
        };
    };

    SkapiRealtime.prototype._watchChannel = function (call, channel) {
        var self = this;
        var emit = function (event) { self._rtcEmit(call, event); };
        channel.onopen = function (event) {
            emit({
                type: event.type, target: channel, timeStamp: event.timeStamp, readyState: channel.readyState,
                label: channel.label, id: channel.id, ordered: channel.ordered,
                maxRetransmits: channel.maxRetransmits, protocol: channel.protocol
            });
        };
        channel.onmessage = function (event) {
            emit({
                type: event.type, target: channel, timeStamp: event.timeStamp, data: event.data,
                lastEventId: event.lastEventId, origin: event.origin, readyState: channel.readyState,
                bufferedAmount: channel.bufferedAmount
            });
        };
        channel.onerror = function (event) {
            emit({
                type: event.type, target: channel, timeStamp: event.timeStamp,
                error: event.error && event.error.message, errorCode: event.error && event.error.errorDetail,
                readyState: channel.readyState, label: channel.label
            });
        };
        channel.onbufferedamountlow = function (event) {
            emit({
                type: event.type, target: channel, timeStamp: event.timeStamp, bufferedAmount: channel.bufferedAmount,
                bufferedAmountLowThreshold: channel.bufferedAmountLowThreshold
            });
        };
        channel.onclose = function (event) {
            emit({
                type: event.type, target: channel, timeStamp: event.timeStamp, readyState: channel.readyState,
                label: channel.label, id: channel.id
            });
            if (call.channels[channel.label] === channel) {
                delete call.channels[channel.label];
                if (!Object.keys(call.channels).length) {
                    self._endCall(call.cid, true, null); // the last channel closed: so does the call
                }
            }
        };
    };

    SkapiRealtime.prototype._offer = function (call) {
        var self = this;
        var peer = call.peer;
        return peer.createOffer().then(function (offer) {
            return peer.setLocalDescription(offer);
        }).then(function () {
            return self._signal(call.cid, { sdpoffer: peer.localDescription.toJSON() });
        });
    };

    // Remote candidates wait for the remote description; then they go in order.
    SkapiRealtime.prototype._flushCandidates = function (call) {
        var peer = call.peer;
        if (!peer || !peer.remoteDescription || !peer.remoteDescription.type) {
            return Promise.resolve();
        }
        var pending = call.candidates.splice(0);
        return pending.reduce(function (done, candidate) {
            return done.then(function () {
                return peer.addIceCandidate(candidate).catch(function () {});
            });
        }, Promise.resolve());
    };

    SkapiRealtime.prototype._answerOffers = function (call) {
        var self = this;
        var peer = call.peer;
        var offers = call.offers.splice(0);
        return offers.reduce(function (done, offer) {
            return done.then(function () {
                return peer.setRemoteDescription(offer);
            }).then(function () {
                return peer.createAnswer();
            }).then(function (answer) {
                return peer.setLocalDescription(answer);
            }).then(function () {
                return self._signal(call.cid, { sdpanswer: peer.localDescription.toJSON() });
            });
        }, Promise.resolve()).then(function () {
            return self._flushCandidates(call);
        });
    };

    // A `#rtc` frame: signalling of the call with its sender, handled in order.
    SkapiRealtime.prototype._onRtc = function (data) {
        var self = this;
        var cid = withCid(data['#scid']);
        var content = data['#rtc'];
        if (cid === null || !content || typeof content !== 'object') {
            return;
        }
        if (has(content, 'hungup')) {
            this._endCall(cid, false, data);
            return;
        }
        var call = this._call(cid);
        call.userId = data['#user_id'];
        call.queue = call.queue.then(function () {
            return self._signalled(call, content, data);
        }).catch(function (err) {
            self._rtcEmit(call, { type: 'error', target: call.peer, timestamp: now(), error: String(err && err.message || err) });
        });
    };

    SkapiRealtime.prototype._signalled = function (call, content, data) {
        var self = this;
        var steps = Promise.resolve();
        if (content.candidate) {
            call.candidates.push(content.candidate);
            steps = steps.then(function () { return self._flushCandidates(call); });
        }
        if (content.sdpoffer) {
            call.offers.push(content.sdpoffer);
            if (call.peer) { // a renegotiation of a call in progress
                steps = steps.then(function () { return self._answerOffers(call); });
            } else if (!call.incoming) {
                call.incoming = true;
                var cid = call.cid;
                this._emit('rtc:incoming', undefined, data, null, {
                    connectRTC: function (params, callback) { return self._answer(cid, params, callback); },
                    hangup: function () { self._endCall(cid, true, null); }
                });
            }
        }
        if (content.pickup && call.ringing) {
            var ringing = call.ringing;
            call.ringing = null;
            ringing(true);
        }
        if (content.sdpanswer && call.peer && call.peer.signalingState === 'have-local-offer') {
            steps = steps.then(function () {
                return call.peer.setRemoteDescription(content.sdpanswer);
            }).then(function () {
                return self._flushCandidates(call);
            });
        }
        return steps;
    };

    // Ends the call with `cid`: closes its channels and peer, tells the other
    // side (`tell`) unless it hung up itself, and emits `rtc:closed` once
    // (`quiet`: a call that never rang, whose connectRTC rejects, emits nothing).
    SkapiRealtime.prototype._endCall = function (cid, tell, data, quiet) {
        var calls = this._calls || {};
        var ended = this._ended || (this._ended = {});
        var call = calls[cid];
        if (!call) {
            if (data && !ended[cid]) { // a call we never saw: still say it ended
                this._emit('rtc:closed', data['#rtc'], data);
            }
            delete ended[cid];
            return;
        }
        delete calls[cid];
        ended[cid] = true; // the other side's hang-up that may follow is not news
        var peer = call.peer;
        Object.keys(call.channels).forEach(function (label) {
            var channel = call.channels[label];
            channel.onclose = null;
            if (channel.readyState !== 'closed') {
                channel.close();
            }
        });
        call.channels = {};
        if (tell && (peer || call.incoming || call.ringing)) {
            this._signal(cid, { hungup: this.user ? this.user.user_id : true }).catch(function () {});
        }
        if (peer) {
            peer.onconnectionstatechange = null;
            if (peer.connectionState !== 'closed') {
                peer.close();
            }
            if (quiet) {
                call.callback = null;
            }
            this._rtcEmit(call, {
                type: 'connectionstatechange', target: peer, timestamp: now(), state: peer.connectionState,
                iceState: peer.iceConnectionState, signalingState: peer.signalingState
            });
        }
        if (call.ownMedia && call.media) {
            call.media.getTracks().forEach(function (track) { track.stop(); });
        }
        if (call.ringing) {
            call.ringing = null; // as in skapi-js, an unanswered `connection` stays pending
        }
        if (quiet) {
            delete ended[cid];
            return;
        }
        // The event names the other side, whichever side ended the call.
        this._emit('rtc:closed', data ? data['#rtc'] : null, data || { '#scid': cid.slice(4), '#user_id': call.userId });
    };

    SkapiRealtime.prototype._openSocket = function () {
        var self = this;
        return this._connection().then(function (connected) {
            if (!connected) {
                throw skapiError('INVALID_REQUEST', MSG.noConnection);
            }
            if (!self._socket || self._socket.readyState !== 1) {
                throw skapiError('INVALID_REQUEST', 'Realtime connection is not ready.');
            }
        });
    };

    SkapiRealtime.prototype.connectRTC = function (params, callback) {
        var self = this;
        var cid, channels, call;
        try {
            if (typeof callback !== 'function') {
                throw skapiError('INVALID_PARAMETER', 'Callback is required.');
            }
            if (typeof RTCPeerConnection === 'undefined') {
                throw skapiError('NOT_SUPPORTED', 'WebRTC is not supported in this browser.');
            }
            params = extract(params) || {};
            cid = checkCid(params.cid);
            checkMedia(params.media);
            channels = (params.channels || DEFAULT_CHANNELS).map(function (option) {
                if (typeof option === 'string') {
                    if (!has(CHANNEL_PRESETS, option)) {
                        throw skapiError('INVALID_PARAMETER', '"channels" presets are: ' + Object.keys(CHANNEL_PRESETS).join(', ') + '.');
                    }
                    return Object.assign({}, CHANNEL_PRESETS[option]);
                }
                if (!option || typeof option !== 'object') {
                    throw skapiError('INVALID_PARAMETER', '"channels" must be presets or RTCDataChannelInit objects.');
                }
                return Object.assign({ protocol: 'default' }, option);
            });
            var labels = {};
            channels.forEach(function (option) {
                if (labels[option.protocol]) {
                    throw skapiError('INVALID_REQUEST', 'Data channel with the protocol "' + option.protocol + '" already exists.');
                }
                labels[option.protocol] = true;
            });
            if (this._calls && this._calls[cid] && (this._calls[cid].peer || this._calls[cid].incoming)) {
                throw skapiError('INVALID_REQUEST', 'A call with "' + cid + '" is already in progress.');
            }
        } catch (err) {
            return Promise.reject(err);
        }
        return this._openSocket().then(function () {
            call = self._call(cid);
            call.callback = callback;
            call.peer = new RTCPeerConnection({ iceServers: self._iceServers(params.ice) });
            return params.media ? openMedia(params.media) : null;
        }).then(function (media) {
            if (media) {
                call.media = media.stream;
                call.ownMedia = media.own;
                media.stream.getTracks().forEach(function (track) { call.peer.addTrack(track, media.stream); });
            }
            channels.forEach(function (option) {
                var channel = call.peer.createDataChannel(option.protocol, option);
                call.channels[option.protocol] = channel;
                self._watchChannel(call, channel);
            });
            var connection = new Promise(function (resolve) {
                call.ringing = function (picked) {
                    if (picked) {
                        resolve({
                            target: call.peer,
                            channels: call.channels,
                            hangup: function () { return self.closeRTC({ cid: cid }); },
                            media: call.media
                        });
                    }
                };
            });
            self._watchPeer(call, true);
            return self._offer(call).then(function () {
                return {
                    hangup: function () { self._endCall(cid, true, null); },
                    connection: connection
                };
            });
        }).catch(function (err) {
            if (call && self._calls && self._calls[cid] === call) {
                call.ringing = null;
                self._endCall(cid, false, null, true);
            }
            throw err instanceof SkapiError ? err : skapiError('ERROR', String(err && err.message || err));
        });
    };

    // The `connectRTC` an `rtc:incoming` event carries: answers the call.
    SkapiRealtime.prototype._answer = function (cid, params, callback) {
        var self = this;
        var call = this._calls && this._calls[cid];
        if (!call || !call.incoming || call.peer) {
            return Promise.resolve(null); // hung up meanwhile, or answered already
        }
        try {
            if (typeof callback !== 'function') {
                throw skapiError('INVALID_PARAMETER', 'Callback is required.');
            }
            params = extract(params) || {};
            checkMedia(params.media);
        } catch (err) {
            return Promise.reject(err);
        }
        call.callback = callback;
        call.peer = new RTCPeerConnection({ iceServers: this._iceServers(params.ice) });
        call.peer.ondatachannel = function (event) {
            call.channels[event.channel.label] = event.channel;
            self._watchChannel(call, event.channel);
        };
        this._watchPeer(call, false);
        var answered = (params.media ? openMedia(params.media) : Promise.resolve(null)).then(function (media) {
            if (media) {
                call.media = media.stream;
                call.ownMedia = media.own;
                media.stream.getTracks().forEach(function (track) { call.peer.addTrack(track, media.stream); });
            }
            call.incoming = false;
            return self._answerOffers(call);
        }).then(function () {
            return self._signal(cid, { pickup: self.user ? self.user.user_id : true });
        }).then(function () {
            return {
                target: call.peer,
                channels: call.channels,
                hangup: function () { return self.closeRTC({ cid: cid }); },
                media: call.media
            };
        });
        call.queue = call.queue.then(function () { return answered; }).catch(function () {});
        return answered.catch(function (err) {
            self._endCall(cid, true, null);
            throw err instanceof SkapiError ? err : skapiError('ERROR', String(err && err.message || err));
        });
    };

    SkapiRealtime.prototype.closeRTC = function (params) {
        var self = this;
        params = params || {};
        try {
            if (!params.close_all) {
                if (!params.cid) {
                    throw skapiError('INVALID_PARAMETER', '"cid" is required.');
                }
                checkCid(params.cid);
            }
        } catch (err) {
            return Promise.reject(err);
        }
        var cids = params.close_all ? Object.keys(this._calls || {}) : [params.cid];
        cids.forEach(function (cid) { self._endCall(cid, true, null); });
        return Promise.resolve(null);
    };

    // ------------------------------------------------------ the global skapi

    function configFromScript(script) {
        var d = (script && script.dataset) || {};
        return {
            socketPath: d.socketPath,
            groupsUrl: d.groupsUrl,
            usersUrl: d.usersUrl,
            tokenUrl: d.tokenUrl,
            auth: d.auth === 'token' ? 'token' : 'cookie',
            userId: d.userId,
            iceServers: d.iceServers ? JSON.parse(d.iceServers) : null
        };
    }

    // Imported as a module there is no currentScript: fall back to the
    // template tag's script element, then to the default paths.
    var script = typeof document === 'undefined' ? null
        : document.currentScript || document.querySelector('script[data-socket-path]');
    var scriptConfig = configFromScript(script);

    // `new Skapi(service, owner, options)` as Skapi pages start. The service and
    // owner are kept but unused (the Django project is the service); `options`
    // may set any SkapiRealtime option over the script tag's.
    function Skapi(service, owner, options) {
        if (!(this instanceof Skapi)) {
            throw new TypeError("Class constructor Skapi cannot be invoked without 'new'");
        }
        var config = Object.assign({}, scriptConfig);
        if (options && typeof options === 'object') {
            Object.keys(options).forEach(function (k) {
                if (has(DEFAULTS, k)) {
                    config[k] = options[k];
                }
            });
        }
        SkapiRealtime.call(this, config);
        this.service = service === undefined ? null : service;
        this.owner = owner === undefined ? null : owner;
    }
    Skapi.prototype = Object.create(SkapiRealtime.prototype);
    Skapi.prototype.constructor = Skapi;

    global.SkapiRealtime = SkapiRealtime;
    global.SkapiError = global.SkapiError || SkapiError;
    SkapiRealtime.SkapiError = SkapiError;
    // skapi-js on the same page keeps its own globals.
    if (!global.Skapi) {
        global.Skapi = Skapi;
    }
    if (!global.skapi) {
        global.skapi = new Skapi(null, null);
    }
})(typeof window !== 'undefined' ? window : globalThis);
