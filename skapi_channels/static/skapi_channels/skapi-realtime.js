/*
 * skapi-realtime.js: Skapi's realtime API (connectRealtime, postRealtime,
 * joinRealtime, getRealtimeGroups, getRealtimeUsers, closeRealtime) served by
 * the skapi_channels Django app. Plain JavaScript, no build step.
 *
 * Load it with {% load skapi_channels %}{% skapi_realtime %}: the script tag's
 * data-* attributes configure the global `skapi`. The wire format is
 * PROTOCOL.md; docs/client.md lists where the behaviour differs from skapi-js.
 */
(function (global) {
    'use strict';

    // ---------------------------------------------------------------- errors

    var MSG = {
        callback: 'Callback must be a function.',
        connection: 'Skapi: WebSocket connection error.',
        noConnection: 'No realtime connection. Execute connectRealtime() before this method.',
        notOpen: 'Realtime connection is not open. Try reconnecting with connectRealtime().',
        noRecipient: 'No recipient.',
        noGroup: 'No group has been joined. Otherwise "group" is required.'
    };

    function skapiError(code, message) {
        return { code: code, message: message };
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
        csrfCookie: 'csrftoken'
    };

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
        this._startKeyHistory = {};
        this._inflight = {};
    }

    SkapiRealtime.State = State;

    Object.defineProperty(SkapiRealtime.prototype, 'state', {
        get: function () { return this._state; }
    });

    Object.defineProperty(SkapiRealtime.prototype, 'group', {
        get: function () { return this._group; }
    });

    SkapiRealtime.prototype._emit = function (type, message, data) {
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
        if (typeof this._callback === 'function') {
            try {
                this._callback(event);
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
                        self._onLost();
                    }
                };
            });
        });
    };

    SkapiRealtime.prototype._onOpen = function (socket) {
        var self = this;
        this._state = State.OPEN;
        this._openedAt = Date.now();
        this._opening = Promise.resolve(socket);
        this._startKeepAlive(socket);
        if (this._group === null) {
            this._emit('success', 'Connected to WebSocket server.');
            return;
        }
        // Rejoin before anything else is sent on the new socket, and report
        // success once the group is joined again.
        var group = this._group;
        this._request({ action: 'joinRoom', rid: group }).then(function () {
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

    // An open socket closed without closeRealtime(): reconnect with backoff.
    SkapiRealtime.prototype._onLost = function () {
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
            if (self._state !== State.RECONNECTING) {
                return;
            }
            self._open().catch(function () {
                if (self._state === State.RECONNECTING) {
                    self._scheduleReconnect();
                }
            });
        }, delay);
    };

    SkapiRealtime.prototype._giveUp = function () {
        this._reset();
        this._emit('error', MSG.connection);
    };

    SkapiRealtime.prototype._reset = function () {
        this._generation += 1; // anything still opening is abandoned
        this._state = State.CLOSED;
        this._opening = null;
        this._group = null;
        this._attempt = 0;
        this._authFailed = false;
        this._stopKeepAlive();
        if (this._reconnectTimer) {
            clearTimeout(this._reconnectTimer);
            this._reconnectTimer = null;
        }
    };

    SkapiRealtime.prototype._startKeepAlive = function (socket) {
        var self = this;
        this._stopKeepAlive();
        this._keepAliveTimer = setInterval(function () {
            if (self._socket === socket && socket.readyState === 1) {
                socket.send(JSON.stringify({ action: 'keepAlive' }));
            }
        }, this.config.keepAlive);
    };

    SkapiRealtime.prototype._stopKeepAlive = function () {
        if (this._keepAliveTimer) {
            clearInterval(this._keepAliveTimer);
            this._keepAliveTimer = null;
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
        return new Promise(function (resolve, reject) {
            var timer = setTimeout(function () {
                delete self._pending[id];
                reject(skapiError('ERROR', MSG.connection));
            }, self.config.ackTimeout);
            self._pending[id] = { resolve: resolve, reject: reject, timer: timer };
            socket.send(JSON.stringify(frame));
        });
    };

    SkapiRealtime.prototype._settle = function (id, error) {
        var entry = this._pending[id];
        if (!entry) {
            return false;
        }
        delete this._pending[id];
        clearTimeout(entry.timer);
        if (error) {
            entry.reject(error);
        } else {
            entry.resolve();
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
            this._settle(data['#ack'], null);
        } else if (has(data, '#error')) {
            var id = data['#id'];
            var error = skapiError(data['#code'] || 'ERROR', data['#error']);
            if (id === null || id === undefined || !this._settle(id, error)) {
                this._emit('error', data['#error'], data);
            }
        } else if (has(data, '#message')) {
            this._emit('message', data['#message'], data);
        } else if (has(data, '#private')) {
            this._emit('private', data['#private'], data);
        } else if (has(data, '#notice')) {
            this._emit('notice', data['#notice'], data);
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

    // ------------------------------------------------------------ public API

    SkapiRealtime.prototype.connectRealtime = function (cb) {
        var self = this;
        if (typeof cb !== 'function') {
            return rejectWith('INVALID_REQUEST', MSG.callback);
        }
        if (this._state === State.RECONNECTING) {
            // Try at once instead of waiting for the next backoff step.
            this._callback = cb;
            if (this._reconnectTimer) {
                clearTimeout(this._reconnectTimer);
                this._reconnectTimer = null;
            }
            return this._open().catch(function () {
                if (self._state === State.RECONNECTING && !self._reconnectTimer) {
                    self._scheduleReconnect();
                }
                throw skapiError('ERROR', MSG.connection);
            });
        }
        if (this._opening) {
            return this._opening;
        }
        this._callback = cb;
        this._state = State.CONNECTING;
        var generation = this._generation;
        var opening = this._open().catch(function () {
            if (self._generation === generation) {
                self._reset();
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
            var previous = self._group;
            self._group = group; // messages sent from now on go to the new group
            return self._request({ action: 'joinRoom', rid: group }).then(function () {
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
        var hadConnection = this._state !== State.CLOSED;
        this._socket = null;
        this._reset();
        this._failPending(skapiError('INVALID_REQUEST', MSG.noConnection));
        if (!hadConnection) {
            return Promise.resolve(null);
        }
        return new Promise(function (resolve) {
            var done = function () {
                self._emit('close', 'WebSocket connection closed.');
                resolve(null);
            };
            if (!socket || socket.readyState === 3) {
                done();
                return;
            }
            var timer = setTimeout(done, 3000);
            socket.onclose = function () {
                clearTimeout(timer);
                done();
            };
            socket.onmessage = null;
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

    // ------------------------------------------------------ the global skapi

    function configFromScript(script) {
        var d = (script && script.dataset) || {};
        return {
            socketPath: d.socketPath,
            groupsUrl: d.groupsUrl,
            usersUrl: d.usersUrl,
            tokenUrl: d.tokenUrl,
            auth: d.auth === 'token' ? 'token' : 'cookie'
        };
    }

    global.SkapiRealtime = SkapiRealtime;
    if (!global.skapi) {
        // Imported as a module there is no currentScript: fall back to the
        // template tag's script element, then to the default paths.
        var script = document.currentScript || document.querySelector('script[data-socket-path]');
        global.skapi = new SkapiRealtime(configFromScript(script));
    }
})(typeof window !== 'undefined' ? window : globalThis);
