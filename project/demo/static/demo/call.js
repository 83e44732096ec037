/*
 * Calls in the demo: the sample of Skapi's WebRTC documentation ("Setting Up
 * Realtime and RTC"), unchanged but for where a call starts: the sample calls
 * whoever joins the room; here the "Call" button next to a participant runs
 * the same connectRTC lines (callRTC below). chat.js passes every realtime
 * event to RealtimeCallback. A classic, sloppy-mode script on purpose: the
 * sample's inline handlers use its globals.
 */

let call = null; // This will later be set to the resolved RTC connection object.
var rtcConnection = null;

// This RTCCallback is used in connectRTC() on both the calling and receiving sides.

function RTCCallback(e) {
    console.log("RTC Callback:", e);

    switch (e.type) {
        // RTC Events
        case "negotiationneeded":
            // RTC negotiation is needed. Send an offer.
            break;

        case "track":
            // Attach the incoming media stream to the remote video element.
            document.getElementById('remoteVideo').srcObject = e.streams[0];
            document.getElementById("remoteVideo").play();
            break;

        case "connectionstatechange":
            // RTC connection state

            if (
                e.state === "disconnected" ||
                e.state === "failed" ||
                e.state === "closed"
            ) {
                // RTC has disconnected. Hide the opponent video element.
                document.getElementById('remoteVideo').hidden = true;

            } else if (e.state === "connecting") {
                // Callback executed when the user is connected to RTC.
                // Show the opponent video element.
                document.getElementById('remoteVideo').hidden = false;
            }
            break;

        // Data Channel Events
        case "close":
            // Data channel is closed
            break;
        case "message":
            // Data channel message received from remote peer.
            console.log(`Message received from RTC data channel:`, e.data);
            break;
        case "open":
            // Data channel opened
            break;
        case "bufferedamountlow":
            // Data channel low buffer
            break;
        case "error":
            // Data channel error
            break;
    }
}

// The sample's lines that start a call, run by the "Call" button.
async function callRTC(cid) {
    call = await skapi.connectRTC({cid: cid, media: { audio: true, video: true}}, RTCCallback);

    call_dialog.innerHTML = /*html*/`
        <p>Outgoing call</p>
        <button onclick="call.hangup(); call_dialog.close();">Reject</button>
    `;

    call_dialog.showModal(); // Display outgoing call dialog

    rtcConnection = await call.connection; // Save resolved RTC connection object
    document.getElementById('localVideo').srcObject = rtcConnection.media; // Show outgoing local media stream
}

// Realtime event listener
async function RealtimeCallback(rt) {
    if (rt.type === 'rtc:incoming') {
        // incoming RTC call
        call = rt;

        call_dialog.innerHTML = /*html*/`
            <p>Incoming call</p>
            <button onclick='
                call.connectRTC({ media: {audio: true, video: true} }, RTCCallback)
                    .then(rtc => {
                        rtcConnection = rtc; // Save resolved RTC connection object
                        document.getElementById("localVideo").srcObject = rtcConnection.media; // Show outgoing local media stream
                        call_dialog.close();
                    })
            '>Accept</button>
            <button onclick="call.hangup(); call_dialog.close();">Reject</button>
        `;

        call_dialog.showModal(); // Display incoming call dialog
    }

    else if (rt.type === 'rtc:closed') {
        // RTC connection is completely closed
        call = null;
        // The demo's own addition: the dialog and the videos go with the call.
        if (call_dialog.open) {
            call_dialog.close();
        }
        document.getElementById('localVideo').srcObject = null;
        rtcConnection = null;
    }
}
