// The console's live view of a running turn: its events from the server-sent events of
// /console/sessions/{id}/events, shown as they come; a permission request as a form of its
// options; how the turn ended once it has. Text goes in as text, never as HTML.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  var list = document.getElementById("live-events");
  var state = document.getElementById("live-state");
  var csrf = live.getAttribute("data-csrf");
  var session = live.getAttribute("data-session");

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text) node.textContent = text;
    return node;
  }

  function item(kind, label, title, text, details) {
    var last = list.lastElementChild;
    if (text && last && last.getAttribute("data-kind") === kind &&
        (kind === "message" || kind === "thought")) {
      last.querySelector(".ev-text").textContent += text;
      return last;
    }
    var li = el("li", "ev ev-" + kind);
    li.setAttribute("data-kind", kind);
    var head = el("div", "ev-head");
    head.appendChild(el("span", "ev-label", label));
    if (title) {
      head.appendChild(document.createTextNode(" "));
      head.appendChild(el("span", "ev-title", title));
    }
    li.appendChild(head);
    if (text) li.appendChild(el("div", "ev-text", text));
    if (details && details.length) {
      var ul = el("ul", "ev-details");
      details.forEach(function (d) { ul.appendChild(el("li", null, d)); });
      li.appendChild(ul);
    }
    list.appendChild(li);
    return li;
  }

  function dash(v) { return v === null || v === undefined ? "—" : String(v); }

  function permissionForm(e) {
    var form = el("form", "answer");
    form.method = "post";
    form.action = "/console/sessions/" + encodeURIComponent(session) +
      "/permissions/" + encodeURIComponent(e.request_id);
    var token = el("input");
    token.type = "hidden"; token.name = "csrf"; token.value = csrf;
    form.appendChild(token);
    (e.options || []).forEach(function (o) {
      var b = el("button", /^reject/.test(o.kind) ? "danger" : null, o.name);
      b.type = "submit"; b.name = "option_id"; b.value = o.option_id;
      form.appendChild(b);
      form.appendChild(document.createTextNode(" "));
    });
    return form;
  }

  var show = {
    message: function (e) { item("message", "Agent", "", e.text); },
    thought: function (e) { item("thought", "Thought", "", e.text); },
    notice: function (e) { item("notice", "Notice", "", e.text); },
    tool_call: function (e) {
      var details = ["kind: " + dash(e.kind), "status: " + dash(e.status)];
      (e.locations || []).forEach(function (l) { details.push("at " + l); });
      item("tool_call", "Tool call", e.title, "", details);
    },
    tool_call_update: function (e) {
      item("tool_call_update", "Tool call update", e.title || "",
        "", e.status ? ["status: " + e.status] : []);
    },
    plan: function (e) {
      item("plan", "Plan", "", "", (e.entries || []).map(function (p) {
        return "[" + dash(p.status) + "] " + p.content;
      }));
    },
    usage: function (e) {
      var cost = e.cost_usd === null || e.cost_usd === undefined ? "—" : e.cost_usd.toFixed(4) + " USD";
      item("usage", "Usage", "", "", ["context: " + dash(e.used) + " of " + dash(e.size), "cost so far: " + cost]);
    },
    permission: function (e) {
      item("permission", "Permission", e.title || "", "", [e.decision + " by " + e.by]);
    },
    permission_request: function (e) {
      var li = item("permission_request", "Permission asked", e.title || "", "", []);
      li.appendChild(permissionForm(e));
    }
  };

  var source = new EventSource(live.getAttribute("data-events"));
  Object.keys(show).forEach(function (type) {
    source.addEventListener(type, function (m) { show[type](JSON.parse(m.data)); });
  });
  // The end: said where the page said "Running", the events left as they came; a reload shows
  // the turn as the page shows every ended turn.
  function ended(text, failed) {
    source.close();
    state.textContent = text + " ";
    state.className = failed ? "error" : "ended";
    var again = el("a", null, "Reload");
    again.href = window.location.pathname;
    state.appendChild(again);
    var cancel = document.getElementById("cancel-turn");
    if (cancel) cancel.disabled = true;
  }
  source.addEventListener("turn", function (m) {
    var turn = JSON.parse(m.data);
    ended("Ended: " + turn.stop_reason + " after " + turn.duration_ms + " ms.", false);
  });
  source.addEventListener("error", function (m) {
    if (!m.data) return; // the connection: EventSource tries again by itself
    var body = JSON.parse(m.data);
    ended("Failed: " + (body.error ? body.error.message : "the turn failed") + ".", true);
  });
  state.textContent = "Running: its events appear here as they come.";
})();
