/*
 * The demo chat page. Every realtime call goes through the global `skapi`
 * set up by {% skapi_realtime %}; this file only draws.
 */
(function () {
    'use strict';

    var me = JSON.parse(document.getElementById('me').textContent);
    var $ = function (id) { return document.getElementById(id); };
    var namesUrl = $('chat').dataset.namesUrl;

    var PAGE = 50;
    var state = {
        group: null, // the group this page has joined
        people: {}, // user_id -> [cid, ...] in the joined group
        loadingPeople: null, // notices queued while the list loads
        privateTo: null,
        search: '',
        groupPages: 1
    };

    // ------------------------------------------------------------ drawing

    // ------------------------------------------------------------- names

    // The page knows no names up front: it asks the demo's names view about
    // the user_ids it shows (participants, senders), a batch at a time, and
    // fills in every element drawn with `nameNode` when the answer comes.
    var names = {};
    names[me.user_id] = me.name;
    var asked = {};
    var wanted = [];
    var askTimer = null;

    function nameOf(userId) {
        if (Object.prototype.hasOwnProperty.call(names, userId)) {
            return names[userId];
        }
        want(userId);
        return 'user ' + userId;
    }

    function want(userId) {
        if (asked[userId] || userId === null || userId === undefined) {
            return;
        }
        asked[userId] = true;
        wanted.push(String(userId));
        clearTimeout(askTimer);
        askTimer = setTimeout(askNames, 20);
    }

    function csrfToken() {
        var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]*)/);
        return match ? decodeURIComponent(match[1]) : '';
    }

    function askNames() {
        var batch = wanted.splice(0, 100);
        if (wanted.length) {
            askTimer = setTimeout(askNames, 0);
        }
        if (!batch.length) {
            return;
        }
        fetch(namesUrl, {
            method: 'POST',
            credentials: 'same-origin',
            headers: { 'Content-Type': 'application/json', 'X-CSRFToken': csrfToken() },
            body: JSON.stringify({ user_ids: batch })
        }).then(function (response) {
            return response.ok ? response.json() : { names: {} };
        }).then(function (answer) {
            Object.keys(answer.names || {}).forEach(function (userId) {
                names[userId] = answer.names[userId];
            });
            var nodes = document.querySelectorAll('[data-name-of]');
            for (var i = 0; i < nodes.length; i++) {
                var node = nodes[i];
                node.textContent = nameOf(node.dataset.nameOf) + (node.dataset.suffix || '');
            }
            drawPeople();
        }, function () {
            batch.forEach(function (userId) { delete asked[userId]; });
        });
    }

    function nameNode(tag, className, userId, suffix) {
        var node = el(tag, className, nameOf(userId) + (suffix || ''));
        node.dataset.nameOf = userId;
        if (suffix) {
            node.dataset.suffix = suffix;
        }
        return node;
    }

    function el(tag, className, text) {
        var node = document.createElement(tag);
        if (className) {
            node.className = className;
        }
        if (text !== undefined) {
            node.textContent = text;
        }
        return node;
    }

    function textOf(content) {
        if (content && typeof content === 'object' && typeof content.text === 'string') {
            return content.text;
        }
        return typeof content === 'string' ? content : JSON.stringify(content);
    }

    function time() {
        return new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    }

    // `text`: a string, or a list of strings and nodes; `extra.from`: the
    // sender's user_id (`extra.fromSuffix` follows the name), or
    // `extra.fromText` instead.
    function log(kind, text, extra) {
        var list = $('log');
        var item = el('li', 'entry ' + kind);
        extra = extra || {};
        if (extra.code) {
            item.dataset.code = extra.code;
        }
        if (extra.fromText) {
            item.appendChild(el('span', 'who', extra.fromText));
        } else if (extra.from !== undefined) {
            item.appendChild(nameNode('span', 'who', extra.from, extra.fromSuffix));
        }
        var body = el('span', 'text');
        (Array.isArray(text) ? text : [text]).forEach(function (part) {
            body.appendChild(typeof part === 'string' ? document.createTextNode(part) : part);
        });
        item.appendChild(body);
        item.appendChild(el('time', 'when', time()));
        var atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
        list.appendChild(item);
        if (atBottom) {
            list.scrollTop = list.scrollHeight;
        }
    }

    function setStatus(kind, text) {
        var status = $('status');
        status.dataset.state = kind;
        status.textContent = text;
        $('connect').hidden = kind !== 'closed';
    }

    function showError(err) {
        log('system error', (err && err.message) || String(err), { code: err && err.code });
    }

    function drawRoom() {
        var joined = state.group !== null;
        $('room-title').textContent = joined ? state.group : 'No group joined';
        $('leave').hidden = !joined;
        var input = document.querySelector('#message-form input');
        input.disabled = !joined;
        input.placeholder = joined ? 'Message ' + state.group : 'Join a group to chat';
        document.querySelector('#message-form button').disabled = !joined;
    }

    function drawPeople() {
        var list = $('user-list');
        list.textContent = '';
        var ids = Object.keys(state.people).sort(function (a, b) {
            return nameOf(a).localeCompare(nameOf(b));
        });
        ids.forEach(function (userId) {
            var item = el('li', 'person');
            item.dataset.userId = userId;
            item.appendChild(nameNode('span', 'name', userId, userId === me.user_id ? ' (you)' : ''));
            var tabs = state.people[userId].length;
            if (tabs > 1) {
                item.appendChild(el('span', 'badge', tabs + ' tabs'));
            }
            if (userId !== me.user_id) {
                var button = el('button', 'small-button', 'Private');
                button.type = 'button';
                button.addEventListener('click', function () { openPrivate(userId); });
                item.appendChild(button);
                // A call rings one connection: the user's latest tab here.
                var cids = state.people[userId];
                var callButton = el('button', 'small-button call', 'Call');
                callButton.type = 'button';
                callButton.addEventListener('click', function () {
                    window.callRTC(cids[cids.length - 1]).catch(showError);
                });
                item.appendChild(callButton);
            }
            list.appendChild(item);
        });
        $('no-users').hidden = ids.length > 0;
        $('no-users').textContent = state.group ? 'Nobody else is here yet.' : 'Join a group to see who is here.';
    }

    function drawGroups(res) {
        var list = $('group-list');
        list.textContent = '';
        res.list.forEach(function (row) {
            var item = el('li', 'group' + (row.group === state.group ? ' current' : ''));
            item.dataset.group = row.group;
            var button = el('button', 'group-button');
            button.type = 'button';
            button.appendChild(el('span', 'name', row.group));
            button.appendChild(el('span', 'count', String(row.number_of_users)));
            button.title = row.number_of_users + (row.number_of_users === 1 ? ' user' : ' users');
            button.addEventListener('click', function () { join(row.group); });
            item.appendChild(button);
            list.appendChild(item);
        });
        $('no-groups').hidden = res.list.length > 0;
        $('more-groups').hidden = res.endOfList;
    }

    // ------------------------------------------------------------- groups

    // The groups panel: prefix search with condition '>=', paged by fetchMore.
    var groupQuery = function () {
        return state.search ? { searchFor: 'group', value: state.search, condition: '>=' } : { searchFor: 'group' };
    };
    var shownGroups = [];

    // `quiet`: the periodic refresh does not fill the log while the server is away.
    function loadGroups(quiet) {
        return skapi.getRealtimeGroups(groupQuery(), { limit: PAGE * state.groupPages }).then(function (res) {
            shownGroups = res.list;
            drawGroups(res);
        }, quiet === true ? function () {} : showError);
    }

    function moreGroups() {
        skapi.getRealtimeGroups(groupQuery(), { limit: PAGE * state.groupPages, fetchMore: true }).then(function (res) {
            state.groupPages += 1;
            shownGroups = shownGroups.concat(res.list);
            drawGroups({ list: shownGroups, endOfList: res.endOfList });
        }, showError);
    }

    var refreshTimer = null;
    function refreshGroupsSoon() {
        clearTimeout(refreshTimer);
        refreshTimer = setTimeout(function () { loadGroups(true); }, 300);
    }

    // ------------------------------------------------------- participants

    function addPerson(userId, cid) {
        var cids = state.people[userId] || (state.people[userId] = []);
        if (cids.indexOf(cid) < 0) {
            cids.push(cid);
        }
    }

    function removePerson(userId, cid) {
        var cids = state.people[userId];
        if (!cids) {
            return;
        }
        state.people[userId] = cids.filter(function (c) { return c !== cid; });
        if (!state.people[userId].length) {
            delete state.people[userId];
        }
    }

    function applyNotice(event) {
        if (event.code === 'USER_JOINED') {
            addPerson(event.sender, event.sender_cid);
        } else if (event.code === 'USER_LEFT' || event.code === 'USER_DISCONNECTED') {
            removePerson(event.sender, event.sender_cid);
        }
    }

    // Every page of getRealtimeUsers; notices that arrive meanwhile are applied after.
    function loadPeople() {
        var group = state.group;
        state.people = {};
        drawPeople();
        if (group === null) {
            return Promise.resolve();
        }
        var queued = state.loadingPeople = [];
        var people = {};
        var page = function (fetchMore) {
            return skapi.getRealtimeUsers({ group: group }, { limit: PAGE, fetchMore: fetchMore }).then(function (res) {
                res.list.forEach(function (row) {
                    var cids = people[row.user_id] || (people[row.user_id] = []);
                    cids.push(row.cid);
                });
                return res.endOfList ? null : page(true);
            });
        };
        return page(false).then(function () {
            if (state.group !== group || state.loadingPeople !== queued) {
                return;
            }
            state.people = people;
            state.loadingPeople = null;
            queued.forEach(applyNotice);
            drawPeople();
        }, showError);
    }

    // --------------------------------------------------- joining, leaving

    function joined(group, res) {
        state.group = group || null;
        closePrivate();
        log('system', res.message);
        drawRoom();
        refreshGroupsSoon();
        return loadPeople();
    }

    // A join shows the group's recent messages (replayed from its history): as
    // many as the join form's hidden "last" input says (the server renders it with
    // at most its HISTORY_SIZE, so it is never refused, and leaves it out while it
    // keeps no history).
    var lastInput = $('join-form').elements.last;
    var RECENT = lastInput ? parseInt(lastInput.value, 10) : 0;

    function join(group) {
        var params = { group: group };
        if (group !== null && RECENT > 0) {
            params.last = RECENT;
        }
        return skapi.joinRealtime(params).then(function (res) {
            return joined(group, res);
        }, showError);
    }

    function openPrivate(userId) {
        state.privateTo = userId;
        $('private-to').textContent = '';
        $('private-to').appendChild(nameNode('span', '', userId));
        $('private-form').hidden = false;
        $('private-text').focus();
    }

    function closePrivate() {
        state.privateTo = null;
        $('private-form').hidden = true;
    }

    // ------------------------------------------------------ realtime events

    function onEvent(event) {
        if (typeof window.RealtimeCallback === 'function') {
            window.RealtimeCallback(event); // the calls (call.js)
        }
        switch (event.type) {
            case 'success':
                setStatus('open', 'Connected');
                log('system', event.message);
                if (state.group !== null) {
                    loadPeople(); // the client has rejoined the group
                }
                refreshGroupsSoon();
                break;
            case 'reconnect':
                setStatus('reconnecting', 'Reconnecting…');
                log('system', event.message);
                break;
            case 'close':
                setStatus('closed', 'Disconnected');
                log('system', event.message);
                state.group = null;
                state.people = {};
                drawRoom();
                drawPeople();
                break;
            case 'error':
                log('system error', event.message, { code: event.code });
                if (skapi.state === 'closed') {
                    setStatus('closed', 'Disconnected');
                }
                break;
            case 'message':
                // Replayed ones: said before this page joined, or while its socket was down.
                log('message' + (event.sender === me.user_id ? ' mine' : '') + (event.replay ? ' replay' : ''),
                    textOf(event.message), { from: event.sender });
                break;
            case 'private':
                if (event.sender === me.user_id) {
                    log('private mine', textOf(event.message), { fromText: 'You (private)' });
                } else {
                    log('private', textOf(event.message), { from: event.sender, fromSuffix: ' (private)' });
                }
                break;
            case 'rtc:incoming':
                log('system', [nameNode('span', 'name', event.sender), ' is calling you.']);
                break;
            case 'rtc:closed':
                log('system', 'The call ended.');
                break;
            case 'notice':
                if (event.sender_rid === state.group) {
                    if (state.loadingPeople) {
                        state.loadingPeople.push(event);
                    } else {
                        applyNotice(event);
                        drawPeople();
                    }
                }
                if (event.code === 'USER_JOINED') {
                    delete asked[event.sender]; // known now even if not when last asked
                }
                log('notice', [nameNode('span', 'name', event.sender), ' ' + noticeText(event.code)], { code: event.code });
                refreshGroupsSoon();
                break;
        }
    }

    function noticeText(code) {
        return {
            USER_JOINED: 'joined the group.',
            USER_LEFT: 'left the group.',
            USER_DISCONNECTED: 'was disconnected.'
        }[code] || code;
    }

    function connect() {
        setStatus('connecting', 'Connecting…');
        return skapi.connectRealtime(onEvent).catch(function (err) {
            setStatus('closed', 'Disconnected');
            showError(err);
        });
    }

    // ------------------------------------------------------------- wiring

    $('search-form').addEventListener('submit', function (event) {
        event.preventDefault();
        state.search = event.target.elements.value.value.trim();
        state.groupPages = 1;
        loadGroups(false);
    });

    $('more-groups').addEventListener('click', moreGroups);

    $('join-form').addEventListener('submit', function (event) {
        // joinRealtime reads the form's "group" input, as Skapi does.
        var form = event.target;
        var group = form.elements.group.value;
        skapi.joinRealtime(event).then(function (res) {
            form.reset();
            return joined(group, res);
        }, showError);
    });

    $('leave').addEventListener('click', function () { join(null); });

    $('message-form').addEventListener('submit', function (event) {
        var form = event.target;
        skapi.postRealtime(event, state.group).then(function () {
            form.reset();
        }, showError);
    });

    $('private-form').addEventListener('submit', function (event) {
        var form = event.target;
        skapi.postRealtime(event, state.privateTo).then(function () {
            form.reset();
        }, showError);
    });

    $('private-cancel').addEventListener('click', closePrivate);
    $('connect').addEventListener('click', connect);

    drawRoom();
    drawPeople();
    connect();
    loadGroups(false);
    setInterval(function () {
        if (!document.hidden) {
            loadGroups(true);
        }
    }, 5000);
})();
