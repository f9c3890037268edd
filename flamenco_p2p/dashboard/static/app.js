// The flamenco-p2p dashboard: a single page that reads the HTTP API of the node
// that serves it and follows the farm through one server-sent event stream.
//
// Every piece of text from the farm goes into the page through textContent or
// text nodes, never through innerHTML, so job and task names show as typed.

// app.js is served at /static/app.js and the API at /api/, so resolving against
// this module's own address keeps working behind a proxy that adds a prefix.
const API_ROOT = new URL("../api/", import.meta.url);

const TOKEN_KEY = "flamenco-p2p.token";
const JOB_PAGE_SIZE = 50;
const TASK_PAGE_SIZE = 200;
const LOG_TAIL_LINES = 200;
// Lines per request when catching up after an interruption, the API's maximum.
const LOG_PAGE_LINES = 1000;
// Maximum lines in the log panel. The oldest lines are removed first.
const LOG_MAX_LINES = 5000;
// First and longest wait, in milliseconds, before opening the event stream again
// after the browser gave up on it.
const RECONNECT_MIN_MS = 1000;
const RECONNECT_MAX_MS = 30000;
// A log panel scrolled to within this many pixels of its end follows new lines.
const LOG_STICK_PX = 24;

const JOB_STATUSES = [
  "queued",
  "active",
  "paused",
  "pause-requested",
  "completed",
  "failed",
  "cancel-requested",
  "canceled",
  "requeueing",
];
const TASK_STATUSES = [
  "queued",
  "active",
  "completed",
  "soft-failed",
  "failed",
  "canceled",
  "paused",
];
const FINAL_JOB_STATUSES = new Set(["completed", "failed", "canceled"]);

const numberFormat = new Intl.NumberFormat();
const percentFormat = new Intl.NumberFormat(undefined, {
  style: "percent",
  maximumFractionDigits: 0,
});

// ---------------------------------------------------------------------------
// DOM helpers

const $ = (id) => {
  const found = document.getElementById(id);
  if (!found) throw new Error(`index.html has no element with id ${id}`);
  return found;
};

/**
 * Creates an element. Strings and numbers among the children become text nodes.
 * Each key of `props` sets a property of the element, except `dataset`, `attrs`
 * and `on`, which set data attributes, plain attributes and event listeners.
 */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "dataset") {
      for (const [name, data] of Object.entries(value)) node.dataset[name] = String(data);
    } else if (key === "attrs") {
      for (const [name, attr] of Object.entries(value)) node.setAttribute(name, String(attr));
    } else if (key === "on") {
      for (const [name, listener] of Object.entries(value)) node.addEventListener(name, listener);
    } else {
      node[key] = value;
    }
  }
  appendChildren(node, children);
  return node;
}

function appendChildren(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function setText(node, text) {
  node.textContent = text === undefined || text === null ? "" : String(text);
}

function statusBadge(status, testid) {
  return el("span", {
    className: "badge",
    textContent: status,
    dataset: { status, ...(testid ? { testid } : {}) },
  });
}

function setBadge(node, status) {
  node.textContent = status;
  node.dataset.status = status;
}

function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

function formatCount(count) {
  return numberFormat.format(count ?? 0);
}

/** Appends a term and its description to a <dl> of name-value pairs. */
function addDetail(list, term, value, testid) {
  const description = el("dd", { dataset: testid ? { testid } : {} });
  appendChildren(description, [value]);
  list.append(el("div", {}, el("dt", {}, term), description));
}

function shortId(id) {
  return id ? String(id).slice(0, 8) : "";
}

// ---------------------------------------------------------------------------
// Application state

const state = {
  token: null,
  farm: null,
  nodes: [],
  route: { name: "home" },
  jobList: { items: [], total: 0, offset: 0, status: "", query: "" },
  job: null,
  tasks: { byId: new Map(), cells: new Map(), total: 0, offset: 0, status: "" },
  // Task events for the open job that arrive while its task page is loading.
  pendingTaskEvents: null,
  log: null,
  thumbnail: { loading: false, again: false, version: 0 },
  events: { source: null, opened: false, retryMs: RECONNECT_MIN_MS },
};

// Replies to outdated requests (a page the user already left) are dropped by
// comparing the number each load took with the latest one.
const requestSerials = new Map();

function nextSerial(name) {
  const serial = (requestSerials.get(name) ?? 0) + 1;
  requestSerials.set(name, serial);
  return serial;
}

function isLatest(name, serial) {
  return requestSerials.get(name) === serial;
}

// ---------------------------------------------------------------------------
// API access

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

function apiUrl(path, params = {}) {
  const url = new URL(path, API_ROOT);
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    url.searchParams.set(key, String(value));
  }
  return url;
}

/** Sends one request to the API and returns the decoded JSON reply, or throws ApiError. */
async function api(method, path, { params, body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && state.token) headers.Authorization = `Bearer ${state.token}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(apiUrl(path, params), init);
  } catch (error) {
    throw new ApiError(0, "network", `The request to the node failed (${error.message}).`, null);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const detail = data && typeof data === "object" ? data.error : null;
    throw new ApiError(
      response.status,
      detail?.code ?? "http",
      detail?.message ?? `${response.status} ${response.statusText}`.trim(),
      detail?.field ?? null,
    );
  }
  return data;
}

// ---------------------------------------------------------------------------
// Messages shown above the page

const MAX_MESSAGES = 4;

function showMessage(kind, ...content) {
  const box = $("messages");
  const message = el(
    "div",
    {
      className: `message ${kind}`,
      dataset: { testid: "message", kind },
      attrs: { role: kind === "error" ? "alert" : "status" },
    },
    el("div", { className: "message-text" }, ...content),
    el("button", {
      type: "button",
      className: "close",
      textContent: "Dismiss",
      attrs: { "aria-label": "Dismiss this message" },
      on: { click: () => message.remove() },
    }),
  );
  // A repeated failure (every reconnect to a node without a server, say)
  // replaces its earlier message instead of stacking up.
  const text = message.querySelector(".message-text").textContent;
  for (const old of box.querySelectorAll(".message")) {
    if (old.querySelector(".message-text")?.textContent === text) old.remove();
  }
  box.append(message);
  while (box.children.length > MAX_MESSAGES) box.firstElementChild.remove();
  return message;
}

function showUnauthorized(error) {
  showMessage(
    "error",
    el("strong", {}, "The farm rejected the change: "),
    error.message,
    " ",
    "The token is missing or wrong. Run ",
    el("code", {}, "flamenco-p2p dashboard"),
    " on a node of the farm and open the link it prints, or paste the output of ",
    el("code", {}, "flamenco-p2p token"),
    " into the token field.",
  );
  $("token-box").open = true;
  $("token-input").focus();
}

function reportError(action, error) {
  if (!(error instanceof ApiError)) {
    console.error(`${action} failed`, error);
    showMessage("error", `${action} failed: ${error}`);
    return;
  }
  if (error.status === 401) {
    showUnauthorized(error);
    return;
  }
  const label = error.status ? `${error.status} ${error.code}` : error.code;
  showMessage("error", el("strong", {}, `${action} failed (${label}): `), error.message);
}

// ---------------------------------------------------------------------------
// Token

function readTokenFromFragment() {
  const fragment = window.location.hash.replace(/^#/, "");
  const match = /(?:^|[&?/])token=([^&]*)/.exec(fragment);
  if (!match) return false;
  let token = match[1];
  try {
    token = decodeURIComponent(token);
  } catch {
    // With a malformed %-escape the raw text is kept, and the farm decides
    // whether it is a valid token.
  }
  if (token.trim()) saveToken(token.trim());
  // Drop the token from the address bar and the history entry, so that it is
  // neither shown nor bookmarked. replaceState does not reload the page.
  const rest = fragment.replace(match[0], "").replace(/^[&?]/, "");
  const route = rest.startsWith("/") ? `#${rest}` : "#/";
  const { pathname, search } = window.location;
  window.history.replaceState(null, "", `${pathname}${search}${route}`);
  return true;
}

function loadStoredToken() {
  try {
    state.token = window.localStorage.getItem(TOKEN_KEY);
  } catch {
    state.token = null;
  }
  renderTokenSummary();
}

function saveToken(token) {
  state.token = token || null;
  try {
    if (state.token) window.localStorage.setItem(TOKEN_KEY, state.token);
    else window.localStorage.removeItem(TOKEN_KEY);
  } catch (error) {
    console.warn("cannot store the token in localStorage", error);
  }
  renderTokenSummary();
}

function renderTokenSummary() {
  const summary = $("token-summary");
  summary.textContent = state.token ? "Token set" : "No token";
  summary.dataset.state = state.token ? "set" : "missing";
}

function setUpTokenForm() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("token-input");
    const token = input.value.trim();
    input.value = "";
    if (!token) return;
    saveToken(token);
    $("token-box").open = false;
    showMessage("info", "Token saved in this browser.");
  });
  $("token-clear").addEventListener("click", () => {
    saveToken(null);
    showMessage("info", "Token removed from this browser.");
  });
}

// ---------------------------------------------------------------------------
// Routing: #/ shows the farm and the job list, #/jobs/ID one job.

function parseRoute() {
  const match = /^#\/jobs\/([0-9a-fA-F]+)\/?$/.exec(window.location.hash);
  return match ? { name: "job", jobId: match[1].toLowerCase() } : { name: "home" };
}

function applyRoute() {
  const route = parseRoute();
  const previous = state.route;
  state.route = route;
  $("view-home").hidden = route.name !== "home";
  $("view-job").hidden = route.name !== "job";
  if (route.name === "home") {
    document.title = state.farm ? `${state.farm.farm} · flamenco-p2p` : "flamenco-p2p";
    closeJobPage();
    loadFarm();
    loadNodes();
    loadJobs();
  } else if (previous.name !== "job" || previous.jobId !== route.jobId) {
    openJobPage(route.jobId);
  }
}

// ---------------------------------------------------------------------------
// Farm overview

async function loadFarm() {
  const serial = nextSerial("farm");
  try {
    const farm = await api("GET", "farm");
    if (!isLatest("farm", serial)) return;
    state.farm = farm;
    renderFarm();
  } catch (error) {
    if (isLatest("farm", serial)) reportError("Loading the farm", error);
  }
}

function renderFarm() {
  const farm = state.farm;
  if (!farm) return;
  setText($("farm-name"), farm.farm);
  if (state.route.name === "home") document.title = `${farm.farm} · flamenco-p2p`;

  const summary = $("farm-summary");
  summary.replaceChildren();
  addDetail(summary, "Farm", farm.farm, "farm-summary-name");
  const server = farm.server
    ? [el("span", { className: "mono" }, farm.server.node_id), ` epoch ${farm.server.epoch}`]
    : el("span", { className: "warn" }, "none elected");
  addDetail(summary, "Server", server, "farm-server");
  const managers = farm.managers ?? [];
  addDetail(
    summary,
    "Managers",
    managers.length
      ? managers.map((manager) =>
          el(
            "span",
            { className: "manager", dataset: { testid: "farm-manager", site: manager.site } },
            `${manager.site}: `,
            el("span", { className: "mono" }, manager.node_id),
            ` epoch ${manager.epoch}`,
          ),
        )
      : el("span", { className: "warn" }, "none elected"),
  );

  const health = { alive: 0, suspect: 0, dead: 0 };
  for (const node of state.nodes) health[node.state] = (health[node.state] ?? 0) + 1;
  addDetail(
    summary,
    "Nodes",
    Object.entries(health).map(([name, count]) =>
      el("span", { className: "count", dataset: { state: name } }, `${count} ${name}`),
    ),
  );
}

async function loadNodes() {
  const serial = nextSerial("nodes");
  try {
    const reply = await api("GET", "nodes");
    if (!isLatest("nodes", serial)) return;
    state.nodes = reply.nodes ?? [];
    renderNodes();
  } catch (error) {
    if (isLatest("nodes", serial)) reportError("Loading the nodes", error);
  }
}

function renderNodes() {
  const rows = state.nodes.map(nodeRow);
  $("node-rows").replaceChildren(...rows);
  renderFarm();
}

function nodeRow(node) {
  const capabilities = node.capabilities ?? {};
  const gpus = capabilities.gpu_types?.length ? capabilities.gpu_types.join(", ") : "no GPU";
  const roles = (node.roles ?? []).map((role) =>
    el(
      "span",
      { className: "role", dataset: { testid: "node-role", role: role.role } },
      `${role.role} · epoch ${role.epoch}`,
    ),
  );
  const place = `${node.site} · ${node.address}${node.this_node ? " · this node" : ""}`;
  const health = { className: "health", dataset: { state: node.state, testid: "node-state" } };
  const cores = `${capabilities.cpu_cores ?? "?"} CPU cores`;
  const workers = (node.workers ?? []).map(workerLine);
  return el(
    "tr",
    { dataset: { testid: "node-row", nodeId: node.node_id, state: node.state } },
    el(
      "td",
      {},
      el("div", { className: "mono", title: node.node_id }, node.node_id),
      el("div", { className: "sub" }, place),
    ),
    el(
      "td",
      {},
      el("span", health, node.state),
      el("div", { className: "sub", title: "last seen" }, formatTime(node.last_seen)),
    ),
    el("td", {}, roles.length ? roles : el("span", { className: "sub" }, "worker only")),
    el(
      "td",
      {},
      el("div", { dataset: { testid: "node-gpus" } }, gpus),
      el("div", { className: "sub", dataset: { testid: "node-cpus" } }, cores),
    ),
    el("td", { dataset: { testid: "node-blender" } }, capabilities.blender_version ?? "unknown"),
    el(
      "td",
      { className: "workers" },
      workers.length ? workers : el("span", { className: "sub" }, "no worker slots"),
    ),
  );
}

function workerLine(worker) {
  const task = worker.current_task;
  if (!task) {
    return el(
      "div",
      { className: "worker idle", dataset: { testid: "worker", workerId: worker.worker_id } },
      el("span", { className: "sub" }, worker.status || "idle"),
    );
  }
  const progress = Math.round((task.progress ?? 0) * 100);
  return el(
    "div",
    { className: "worker", dataset: { testid: "worker", workerId: worker.worker_id } },
    el("a", { href: `#/jobs/${task.job_id}`, dataset: { testid: "worker-task" } }, task.name),
    el("progress", { max: 100, value: progress, attrs: { "aria-label": `${task.name} progress` } }),
    el("span", { className: "sub" }, `${progress}%`),
  );
}

/** Keeps the "rendering now" column current from task events between nodes events. */
function applyTaskToWorkers(task) {
  let changed = false;
  for (const node of state.nodes) {
    for (const worker of node.workers ?? []) {
      const current = worker.current_task;
      if (task.status === "active" && worker.worker_id === task.worker_id) {
        worker.current_task = {
          job_id: task.job_id,
          task_id: task.id,
          name: task.name,
          progress: task.progress ?? 0,
        };
        changed = true;
      } else if (current && current.task_id === task.id) {
        worker.current_task = null;
        changed = true;
      }
    }
  }
  if (changed && state.route.name === "home") renderNodes();
}

// ---------------------------------------------------------------------------
// Job list

function setUpJobList() {
  const filter = $("job-filter");
  for (const status of JOB_STATUSES) filter.append(el("option", { value: status }, status));
  filter.addEventListener("change", () => {
    state.jobList.status = filter.value;
    state.jobList.offset = 0;
    loadJobs();
  });
  const search = $("job-search");
  // "change" fires on Enter and when the field loses focus, so typing does not
  // send one request per key.
  search.addEventListener("change", () => {
    state.jobList.query = search.value.trim();
    state.jobList.offset = 0;
    loadJobs();
  });
  $("job-filters").addEventListener("submit", (event) => event.preventDefault());
  $("jobs-prev").addEventListener("click", () => {
    state.jobList.offset = Math.max(0, state.jobList.offset - JOB_PAGE_SIZE);
    loadJobs();
  });
  $("jobs-next").addEventListener("click", () => {
    state.jobList.offset += JOB_PAGE_SIZE;
    loadJobs();
  });
}

async function loadJobs() {
  const list = state.jobList;
  const serial = nextSerial("jobs");
  try {
    const reply = await api("GET", "jobs", {
      params: { status: list.status, q: list.query, limit: JOB_PAGE_SIZE, offset: list.offset },
    });
    if (!isLatest("jobs", serial)) return;
    list.items = reply.jobs ?? [];
    list.total = reply.total ?? list.items.length;
    renderJobs();
  } catch (error) {
    if (isLatest("jobs", serial)) reportError("Loading the jobs", error);
  }
}

function renderJobs() {
  const list = state.jobList;
  $("job-rows").replaceChildren(...list.items.map(jobRow));
  $("jobs-empty").hidden = list.items.length > 0;
  renderJobPager();
}

function renderJobPager() {
  const list = state.jobList;
  const first = list.items.length ? list.offset + 1 : 0;
  const last = list.offset + list.items.length;
  const range = `${formatCount(first)}–${formatCount(last)} of ${formatCount(list.total)}`;
  setText($("jobs-range"), range);
  $("jobs-prev").disabled = list.offset === 0;
  $("jobs-next").disabled = last >= list.total;
}

function progressOf(job) {
  if (typeof job.progress === "number") return Math.min(1, Math.max(0, job.progress));
  if (job.frames_total) return job.frames_done / job.frames_total;
  return 0;
}

function progressLabel(job) {
  const share = percentFormat.format(progressOf(job));
  if (job.frames_total) {
    return `${share} · ${formatCount(job.frames_done)} / ${formatCount(job.frames_total)} frames`;
  }
  const done = job.task_counts?.completed ?? 0;
  return `${share} · ${formatCount(done)} / ${formatCount(job.tasks_total)} tasks`;
}

function progressBar(job, testid) {
  const value = Math.round(progressOf(job) * 1000) / 10;
  return el("progress", {
    max: 100,
    value,
    dataset: { testid, status: job.status },
    attrs: { "aria-valuenow": value, "aria-label": `${job.name} progress` },
  });
}

function taskCountChips(counts) {
  return TASK_STATUSES.filter((status) => (counts?.[status] ?? 0) > 0).map((status) =>
    el(
      "span",
      { className: "chip", dataset: { status, testid: "task-count" }, title: status },
      `${formatCount(counts[status])} ${status}`,
    ),
  );
}

function jobRow(job) {
  return el(
    "tr",
    { dataset: { testid: "job-row", jobId: job.id, status: job.status } },
    el(
      "td",
      { className: "name" },
      el("a", { href: `#/jobs/${job.id}`, dataset: { testid: "job-link" } }, job.name),
    ),
    el("td", {}, statusBadge(job.status, "job-status")),
    el("td", { className: "num", dataset: { testid: "job-priority" } }, job.priority),
    el(
      "td",
      { className: "progress-col" },
      progressBar(job, "job-progress"),
      el("div", { className: "sub" }, progressLabel(job)),
    ),
    el("td", { className: "counts" }, taskCountChips(job.task_counts)),
    el("td", { className: "sub" }, formatTime(job.created)),
  );
}

function jobMatchesList(job) {
  const list = state.jobList;
  if (list.status && job.status !== list.status) return false;
  if (list.query && !job.name.toLowerCase().includes(list.query.toLowerCase())) return false;
  return true;
}

function isNewer(candidate, current) {
  if (!current?.updated || !candidate?.updated) return true;
  return Date.parse(candidate.updated) >= Date.parse(current.updated);
}

function applyJobToList(job) {
  const list = state.jobList;
  const index = list.items.findIndex((item) => item.id === job.id);
  const rows = $("job-rows");
  if (index >= 0) {
    if (!isNewer(job, list.items[index])) return;
    if (!jobMatchesList(job)) {
      list.items.splice(index, 1);
      list.total = Math.max(0, list.total - 1);
      rows.querySelector(`tr[data-job-id="${job.id}"]`)?.remove();
      $("jobs-empty").hidden = list.items.length > 0;
      renderJobPager();
      return;
    }
    list.items[index] = job;
    rows.querySelector(`tr[data-job-id="${job.id}"]`)?.replaceWith(jobRow(job));
    return;
  }

  // The list is newest first, so only a job newer than the first row belongs on
  // the first page. A change to an older job on another page is left for the
  // next load of that page.
  if (list.offset !== 0 || !jobMatchesList(job)) return;
  const newest = list.items[0];
  if (newest && Date.parse(job.created) < Date.parse(newest.created)) return;
  list.items.unshift(job);
  list.total += 1;
  rows.prepend(jobRow(job));
  if (list.items.length > JOB_PAGE_SIZE) {
    list.items.pop();
    rows.lastElementChild?.remove();
  }
  $("jobs-empty").hidden = true;
  renderJobPager();
}

function removeJobFromList(jobId) {
  const list = state.jobList;
  const index = list.items.findIndex((item) => item.id === jobId);
  if (index < 0) return;
  list.items.splice(index, 1);
  list.total = Math.max(0, list.total - 1);
  $("job-rows").querySelector(`tr[data-job-id="${jobId}"]`)?.remove();
  $("jobs-empty").hidden = list.items.length > 0;
  renderJobPager();
}

// ---------------------------------------------------------------------------
// Job page

function setUpJobPage() {
  for (const button of document.querySelectorAll(".actions button[data-action]")) {
    button.addEventListener("click", () => runJobAction(button.dataset.action));
  }
  $("priority-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const priority = Number($("priority-input").value);
    if (!Number.isInteger(priority) || priority < 0 || priority > 100) {
      showMessage("error", "Priority must be a whole number from 0 to 100.");
      return;
    }
    changeJob("Changing the priority", "priority", { priority });
  });

  const filter = $("task-filter");
  for (const status of TASK_STATUSES) filter.append(el("option", { value: status }, status));
  filter.addEventListener("change", () => {
    state.tasks.status = filter.value;
    state.tasks.offset = 0;
    loadTasks();
  });
  $("tasks-prev").addEventListener("click", () => {
    state.tasks.offset = Math.max(0, state.tasks.offset - TASK_PAGE_SIZE);
    loadTasks();
  });
  $("tasks-next").addEventListener("click", () => {
    state.tasks.offset += TASK_PAGE_SIZE;
    loadTasks();
  });

  $("task-grid").addEventListener("click", (event) => {
    const cell = event.target.closest("[data-task-id]");
    if (cell) openLog(cell.dataset.taskId);
  });

  const image = $("job-thumbnail");
  image.addEventListener("load", () => {
    $("thumbnail-box").hidden = false;
    thumbnailSettled();
  });
  image.addEventListener("error", () => {
    // 404 until the job has a rendered frame.
    $("thumbnail-box").hidden = true;
    thumbnailSettled();
  });
  $("log-close").addEventListener("click", closeLog);
  $("log-requeue").addEventListener("click", requeueOpenTask);
}

function openJobPage(jobId) {
  state.job = null;
  state.tasks = { byId: new Map(), cells: new Map(), total: 0, offset: 0, status: "" };
  $("task-filter").value = "";
  closeLog();
  $("job-missing").hidden = true;
  $("job-body").hidden = false;
  $("thumbnail-box").hidden = true;
  // Changing the image's src aborts a load of the previous job's frame without
  // a load or error event, so the state of that load is dropped here.
  state.thumbnail = { loading: false, again: false, version: state.thumbnail.version };
  $("job-thumbnail").removeAttribute("src");
  $("task-grid").replaceChildren();
  setText($("job-name"), "");
  setText($("job-status"), "");
  setText($("task-range"), "");
  setText($("task-total"), "");
  loadJob(jobId);
  loadTasks();
  reloadThumbnail();
}

function closeJobPage() {
  state.job = null;
  state.pendingTaskEvents = null;
  closeLog();
}

async function loadJob(jobId) {
  const serial = nextSerial("job");
  try {
    const job = await api("GET", `jobs/${jobId}`);
    if (!isLatest("job", serial) || state.route.jobId !== jobId) return;
    state.job = job;
    renderJob();
  } catch (error) {
    if (!isLatest("job", serial)) return;
    if (error instanceof ApiError && error.status === 404) {
      showJobMissing(`No job ${jobId} on this farm. It may have been deleted.`);
    } else {
      reportError("Loading the job", error);
    }
  }
}

function showJobMissing(text) {
  const notice = $("job-missing");
  setText(notice, text);
  notice.hidden = false;
  $("job-body").hidden = true;
}

function renderJob() {
  const job = state.job;
  if (!job) return;
  document.title = `${job.name} · flamenco-p2p`;
  setText($("job-name"), job.name);
  setBadge($("job-status"), job.status);
  const bar = $("job-progress");
  const value = Math.round(progressOf(job) * 1000) / 10;
  bar.value = value;
  bar.setAttribute("aria-valuenow", String(value));
  bar.dataset.status = job.status;
  setText($("job-progress-text"), progressLabel(job));
  const priority = $("priority-input");
  if (document.activeElement !== priority) priority.value = String(job.priority);
  renderJobDetails(job);
  const errorBox = $("job-error");
  setText(errorBox, job.error ?? "");
  errorBox.hidden = !job.error;
  $("task-counts").replaceChildren(...taskCountChips(job.task_counts));
  renderActions(job.status);
}

function renderJobDetails(job) {
  const details = $("job-details");
  details.replaceChildren();
  addDetail(details, "Type", job.job_type);
  addDetail(details, "Priority", job.priority, "job-priority");
  addDetail(details, "Tasks", formatCount(job.tasks_total));
  if (job.frames_total) {
    const frames = `${formatCount(job.frames_done)} / ${formatCount(job.frames_total)}`;
    addDetail(details, "Frames", frames);
  }
  addDetail(details, "Submitted", formatTime(job.created));
  addDetail(details, "Updated", formatTime(job.updated));
  if (job.submitter_node) addDetail(details, "Submitted from", job.submitter_node);
  const requirements = job.requirements ?? {};
  if (requirements.gpu && requirements.gpu !== "none") {
    const types = requirements.gpu_types?.length ? ` (${requirements.gpu_types.join(", ")})` : "";
    addDetail(details, "GPU", `${requirements.gpu}${types}`);
  }
  if (requirements.min_blender) {
    addDetail(details, "Blender", `${requirements.min_blender} or newer`);
  }
  const settings = job.settings ?? {};
  if (settings.blend_name) addDetail(details, "Blend file", settings.blend_name);
  if (settings.frames) addDetail(details, "Frame range", settings.frames);
  if (settings.output_dir) addDetail(details, "Output", settings.output_dir);
  addDetail(details, "Id", job.id, "job-id");
}

// Buttons whose change the farm rejects in the job's status are disabled, and
// the statuses follow the farm's 409 messages. The farm stays the authority
// because a view can be out of date, and a 409 it returns is shown as a message.
function renderActions(status) {
  const failedTasks = state.job?.task_counts?.failed ?? 0;
  const enabled = {
    pause: status === "queued" || status === "active",
    resume: status === "paused",
    cancel: !["completed", "canceled", "cancel-requested"].includes(status),
    "requeue-all": ["completed", "failed", "canceled", "paused"].includes(status),
    "requeue-failed": (status === "queued" || status === "active") && failedTasks > 0,
    delete: FINAL_JOB_STATUSES.has(status),
  };
  for (const button of document.querySelectorAll(".actions button[data-action]")) {
    button.disabled = enabled[button.dataset.action] === false;
  }
}

const CONFIRMATIONS = {
  cancel: {
    title: "Cancel this job?",
    text: "Running tasks stop and their unfinished frames are lost. Rendered frames stay.",
    ok: "Cancel job",
    keep: "Keep running",
  },
  "requeue-all": {
    title: "Requeue every task?",
    text: "All tasks run again, including completed ones, and their frames are rendered again.",
    ok: "Requeue all",
    keep: "Do not requeue",
  },
  delete: {
    title: "Delete this job?",
    text: "The farm forgets the job, its tasks and their logs. This cannot be undone.",
    ok: "Delete job",
    keep: "Keep job",
  },
};

/** Asked before a pause only while tasks run, because a pause stops them. */
const PAUSE_RUNNING = {
  title: "Pause this job?",
  text: "Its running tasks stop and their work is lost; they render again when the job resumes.",
  ok: "Pause job",
  keep: "Keep running",
};

async function runJobAction(action) {
  const job = state.job;
  if (!job) return;
  let confirmation = CONFIRMATIONS[action];
  if (action === "pause" && (job.task_counts?.active ?? 0) > 0) confirmation = PAUSE_RUNNING;
  if (confirmation && !(await confirmDialog(confirmation, job.name))) return;
  switch (action) {
    case "pause":
      await changeJob("Pausing the job", "pause");
      break;
    case "resume":
      await changeJob("Resuming the job", "resume");
      break;
    case "cancel":
      await changeJob("Cancelling the job", "cancel");
      break;
    case "requeue-all":
      await changeJob("Requeueing the job", "requeue", { scope: "all" });
      break;
    case "requeue-failed":
      await changeJob("Requeueing the failed tasks", "requeue", { scope: "failed" });
      break;
    case "delete":
      await deleteJob(job);
      break;
    default:
      console.error(`unknown job action ${action}`);
  }
}

/** Shows the confirmation dialog; resolves to true when the user accepts. */
function confirmDialog({ title, text, ok, keep }, jobName) {
  const dialog = $("confirm-dialog");
  setText($("confirm-title"), title);
  const body = $("confirm-text");
  body.replaceChildren(el("strong", {}, jobName), document.createElement("br"), text);
  setText($("confirm-ok"), ok);
  setText($("confirm-cancel"), keep);
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

function setActionsBusy(busy) {
  for (const button of document.querySelectorAll(".actions button")) {
    if (busy) button.dataset.busy = "true";
    else delete button.dataset.busy;
  }
  $("view-job").querySelector(".actions").setAttribute("aria-busy", String(busy));
}

async function changeJob(action, operation, body = {}) {
  const job = state.job;
  if (!job) return;
  setActionsBusy(true);
  try {
    const reply = await api("POST", `jobs/${job.id}/${operation}`, { body });
    if (reply?.job) applyJob(reply.job);
  } catch (error) {
    reportError(action, error);
    // A conflict means that this page shows an outdated status.
    if (error instanceof ApiError && error.status === 409) loadJob(job.id);
  } finally {
    setActionsBusy(false);
  }
}

async function deleteJob(job) {
  setActionsBusy(true);
  try {
    await api("DELETE", `jobs/${job.id}`);
    removeJobFromList(job.id);
    showMessage("info", "Deleted job ", el("strong", {}, job.name), ".");
    window.location.hash = "#/";
  } catch (error) {
    reportError("Deleting the job", error);
    if (error instanceof ApiError && error.status === 409) loadJob(job.id);
  } finally {
    setActionsBusy(false);
  }
}

// ---------------------------------------------------------------------------
// Task grid

// A "tasks" event (many tasks of one job changed at once) reloads the shown
// page. Loads are not started while one runs: the running one is followed by
// one more, so a burst of events costs at most two requests.
const taskReload = { running: false, again: false };

async function reloadTasks() {
  if (taskReload.running) {
    taskReload.again = true;
    return;
  }
  taskReload.running = true;
  try {
    do {
      taskReload.again = false;
      await loadTasks();
    } while (taskReload.again);
  } finally {
    taskReload.running = false;
  }
}

async function loadTasks() {
  const jobId = state.route.jobId;
  if (!jobId) return;
  const tasks = state.tasks;
  const serial = nextSerial("tasks");
  state.pendingTaskEvents = [];
  try {
    const reply = await api("GET", `jobs/${jobId}/tasks`, {
      params: { status: tasks.status, limit: TASK_PAGE_SIZE, offset: tasks.offset },
    });
    if (!isLatest("tasks", serial) || state.route.jobId !== jobId) return;
    tasks.byId = new Map((reply.tasks ?? []).map((task) => [task.id, task]));
    tasks.total = reply.total ?? tasks.byId.size;
    renderTasks();
    // Events that arrived while the page loaded may be newer than the reply.
    const pending = state.pendingTaskEvents ?? [];
    state.pendingTaskEvents = null;
    for (const task of pending) applyTaskToGrid(task);
  } catch (error) {
    if (!isLatest("tasks", serial)) return;
    state.pendingTaskEvents = null;
    // A 404 means that the job is gone, which loadJob reports.
    if (!(error instanceof ApiError && error.status === 404)) {
      reportError("Loading the tasks", error);
    }
  }
}

function renderTasks() {
  const tasks = state.tasks;
  tasks.cells = new Map();
  const cells = [];
  for (const task of tasks.byId.values()) {
    const cell = el("button", {
      type: "button",
      className: "task-cell",
      dataset: { testid: "task-cell", taskId: task.id },
    });
    updateCell(cell, task);
    tasks.cells.set(task.id, cell);
    cells.push(cell);
  }
  $("task-grid").replaceChildren(...cells);
  $("tasks-empty").hidden = cells.length > 0;
  const first = cells.length ? tasks.offset + 1 : 0;
  const last = tasks.offset + cells.length;
  setText($("task-range"), `${numberFormat.format(first)}–${numberFormat.format(last)}`);
  const total = $("task-total");
  setText(total, numberFormat.format(tasks.total));
  total.dataset.total = String(tasks.total);
  $("tasks-prev").disabled = tasks.offset === 0;
  $("tasks-next").disabled = last >= tasks.total;
}

function updateCell(cell, task) {
  cell.dataset.status = task.status;
  const progress = task.status === "active" ? Math.round((task.progress ?? 0) * 100) : null;
  cell.style.setProperty("--progress", progress === null ? "0%" : `${progress}%`);
  const worker = task.worker_id ? ` on ${task.worker_id}` : "";
  const share = progress === null ? "" : ` ${progress}%`;
  cell.title = `${task.name}: ${task.status}${share}${worker}`;
  cell.setAttribute("aria-label", cell.title);
  if (state.log?.taskId === task.id) cell.dataset.selected = "true";
  else delete cell.dataset.selected;
}

function applyTaskToGrid(task) {
  const tasks = state.tasks;
  if (!tasks.byId.has(task.id)) return;
  tasks.byId.set(task.id, task);
  const cell = tasks.cells.get(task.id);
  if (cell) updateCell(cell, task);
  if (state.log?.taskId === task.id) renderLogTask(task);
}

// ---------------------------------------------------------------------------
// Latest frame

// Reloading the image once per completed task would flood the node on a farm
// that finishes many short tasks, so a completion during a load schedules one
// more load after it instead of starting another.
function reloadThumbnail() {
  const thumbnail = state.thumbnail;
  const jobId = state.route.jobId;
  if (!jobId) return;
  if (thumbnail.loading) {
    thumbnail.again = true;
    return;
  }
  thumbnail.loading = true;
  thumbnail.version += 1;
  $("job-thumbnail").src = apiUrl(`jobs/${jobId}/thumbnail`, { v: thumbnail.version }).href;
}

function thumbnailSettled() {
  const thumbnail = state.thumbnail;
  thumbnail.loading = false;
  if (thumbnail.again) {
    thumbnail.again = false;
    reloadThumbnail();
  }
}

// ---------------------------------------------------------------------------
// Task log

async function openLog(taskId) {
  const task = state.tasks.byId.get(taskId);
  state.log = { taskId, lastId: null, lastAttempt: null, loading: true, pending: [], lines: 0 };
  for (const cell of state.tasks.cells.values()) {
    if (cell.dataset.taskId === taskId) cell.dataset.selected = "true";
    else delete cell.dataset.selected;
  }
  const panel = $("log-panel");
  panel.hidden = false;
  $("task-log").replaceChildren(el("div", { className: "log-note" }, "Loading the log…"));
  $("log-download").href = apiUrl(`tasks/${taskId}/log.txt`).href;
  if (task) renderLogTask(task);
  await fetchLog({ tail: LOG_TAIL_LINES }, true);
}

function closeLog() {
  state.log = null;
  $("log-panel").hidden = true;
  for (const cell of state.tasks.cells.values()) delete cell.dataset.selected;
}

function renderLogTask(task) {
  setText($("log-title"), task.name);
  setBadge($("log-task-status"), task.status);
  const details = $("log-task-details");
  details.replaceChildren();
  if (task.worker_id) addDetail(details, "Worker", task.worker_id);
  addDetail(details, "Attempts", task.attempts ?? 0);
  if (task.failures) addDetail(details, "Failures", task.failures);
  const frames = task.frames ?? [];
  if (frames.length) {
    const range = frames.length === 1 ? frames[0] : `${frames[0]}–${frames.at(-1)}`;
    addDetail(details, "Frames", range);
  }
  if (task.error) addDetail(details, "Error", task.error);
}

/**
 * Loads log lines of the open task: the tail when the panel opens, or, with
 * `after`, every line after the last shown one, page by page, once the event
 * stream was interrupted.
 */
async function fetchLog(params, replace) {
  const log = state.log;
  if (!log) return;
  const taskId = log.taskId;
  // The tail opens the panel at its end, but a catch-up keeps the reader's place.
  const initial = params.after === undefined;
  log.loading = true;
  try {
    let query = params;
    for (;;) {
      const reply = await api("GET", `tasks/${taskId}/log`, { params: query });
      if (state.log !== log) return;
      if (replace) $("task-log").replaceChildren();
      replace = false;
      const lines = reply.lines ?? [];
      appendLogLines(lines, initial);
      if (typeof reply.last_id === "number") log.lastId = Math.max(log.lastId ?? 0, reply.last_id);
      if (query.after === undefined || lines.length < query.limit) break;
      query = { after: log.lastId, limit: query.limit };
    }
    const pending = log.pending;
    log.pending = [];
    appendLogLines(pending, false);
    const box = $("task-log");
    if (!log.lines) {
      const note = { className: "log-note", dataset: { testid: "log-empty" } };
      box.replaceChildren(el("div", note, "No log lines yet."));
    }
    if (initial) box.scrollTop = box.scrollHeight;
  } catch (error) {
    if (state.log !== log) return;
    const text = `The log could not be loaded: ${error.message}`;
    $("task-log").replaceChildren(el("div", { className: "log-note" }, text));
    if (!(error instanceof ApiError && error.status === 404)) reportError("Loading the log", error);
  } finally {
    if (state.log === log) log.loading = false;
  }
}

function appendLogLines(lines, stick) {
  const log = state.log;
  const box = $("task-log");
  const follow = stick || box.scrollHeight - box.scrollTop - box.clientHeight <= LOG_STICK_PX;

  const fragment = document.createDocumentFragment();
  let added = 0;
  for (const line of lines) {
    if (log.lastId !== null && typeof line.id === "number" && line.id <= log.lastId) continue;
    if (line.attempt_id && line.attempt_id !== log.lastAttempt) {
      if (log.lastAttempt !== null) {
        const text = `attempt ${shortId(line.attempt_id)}`;
        fragment.append(el("div", { className: "log-note" }, text));
      }
      log.lastAttempt = line.attempt_id;
    }
    const props = {
      className: "log-line",
      dataset: { testid: "log-line", lineId: line.id ?? "" },
      title: formatTime(line.created),
    };
    fragment.append(el("div", props, line.line));
    if (typeof line.id === "number") log.lastId = Math.max(log.lastId ?? 0, line.id);
    added += 1;
  }
  if (!added) return;

  if (!log.lines) box.querySelector(".log-note[data-testid='log-empty']")?.remove();
  box.append(fragment);
  log.lines += added;
  while (log.lines > LOG_MAX_LINES && box.firstElementChild) {
    if (box.firstElementChild.classList.contains("log-line")) log.lines -= 1;
    box.firstElementChild.remove();
  }
  if (follow) box.scrollTop = box.scrollHeight;
}

function applyLogEvent(data) {
  const log = state.log;
  if (!log || data.task_id !== log.taskId) return;
  const lines = (data.lines ?? []).map((line) => ({ ...line, attempt_id: data.attempt_id }));
  if (log.loading) log.pending.push(...lines);
  else appendLogLines(lines, false);
}

async function requeueOpenTask() {
  const log = state.log;
  if (!log) return;
  try {
    const reply = await api("POST", `tasks/${log.taskId}/requeue`, { body: {} });
    if (reply?.task) applyTask(reply.task);
    if (reply?.job) applyJob(reply.job);
  } catch (error) {
    reportError("Requeueing the task", error);
  }
}

// ---------------------------------------------------------------------------
// Events

/**
 * Fills in tasks_total and progress when a job lacks them, from task_counts and
 * the frame counts, so that every job drawn has the fields of the API's Job.
 */
function withDerivedFields(job) {
  const counts = job.task_counts ?? {};
  const countSum = Object.values(counts).reduce((sum, count) => sum + count, 0);
  const tasksTotal = job.tasks_total ?? countSum;
  let progress = job.progress;
  if (typeof progress !== "number") {
    if (job.frames_total) progress = job.frames_done / job.frames_total;
    else progress = tasksTotal ? (counts.completed ?? 0) / tasksTotal : 0;
  }
  return { ...job, tasks_total: tasksTotal, progress };
}

function applyJob(received) {
  const job = withDerivedFields(received);
  applyJobToList(job);
  if (state.route.name === "job" && state.route.jobId === job.id) {
    if (state.job && !isNewer(job, state.job)) return;
    if (!state.job) $("job-missing").hidden = true;
    state.job = job;
    $("job-body").hidden = false;
    renderJob();
  }
}

function applyTask(task) {
  applyTaskToWorkers(task);
  if (state.route.name !== "job" || task.job_id !== state.route.jobId) return;
  if (state.pendingTaskEvents) state.pendingTaskEvents.push(task);
  else applyTaskToGrid(task);
  // Only a task that wrote files can have changed the job's latest frame.
  if (task.status === "completed" && task.outputs?.length) reloadThumbnail();
}

function applyBulkTasks({ job_id: jobId }) {
  if (state.route.name === "job" && state.route.jobId === jobId) reloadTasks();
}

function applyJobDeleted({ id }) {
  removeJobFromList(id);
  if (state.route.name === "job" && state.route.jobId === id) {
    showJobMissing("This job was deleted.");
    state.job = null;
  }
}

function applyNodes({ nodes }) {
  state.nodes = nodes ?? [];
  renderNodes();
  // Role changes move the server and the managers, which /api/farm reports.
  loadFarm();
}

/** Loads again everything on screen, after a reset or a gap in the event stream. */
function refreshAll() {
  loadFarm();
  loadNodes();
  if (state.route.name === "home") {
    loadJobs();
    return;
  }
  const jobId = state.route.jobId;
  loadJob(jobId);
  loadTasks();
  reloadThumbnail();
  if (state.log?.lastId) fetchLog({ after: state.log.lastId, limit: LOG_PAGE_LINES }, false);
  else if (state.log) openLog(state.log.taskId);
}

const EVENT_HANDLERS = {
  hello: (data) => {
    $("connection").title = `Event stream from node ${data.node_id}`;
  },
  job: applyJob,
  job_deleted: applyJobDeleted,
  task: applyTask,
  // {"job_id", "count"}: the farm sends one of these in place of a task event
  // per task when it changes many tasks of a job at once.
  tasks: applyBulkTasks,
  log: applyLogEvent,
  nodes: applyNodes,
  reset: refreshAll,
};

function setConnection(connection, text) {
  const indicator = $("connection");
  indicator.dataset.state = connection;
  indicator.textContent = text;
}

function connectEvents() {
  const events = state.events;
  const source = new EventSource(apiUrl("events"));
  events.source = source;
  source.addEventListener("open", () => {
    setConnection("live", "live");
    events.retryMs = RECONNECT_MIN_MS;
    // Events sent while the stream was down are lost, so reload what is shown.
    if (events.opened) refreshAll();
    events.opened = true;
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (the node answered with an error status, for
      // example), so open a new stream after a growing wait.
      setConnection("offline", "offline");
      source.close();
      const wait = events.retryMs;
      events.retryMs = Math.min(RECONNECT_MAX_MS, events.retryMs * 2);
      window.setTimeout(connectEvents, wait);
    } else {
      setConnection("reconnecting", "reconnecting");
    }
  });
  for (const [name, handler] of Object.entries(EVENT_HANDLERS)) {
    source.addEventListener(name, (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (error) {
        console.error(`invalid JSON in ${name} event`, error);
        return;
      }
      try {
        handler(data);
      } catch (error) {
        console.error(`applying a ${name} event failed`, error);
      }
    });
  }
}

// ---------------------------------------------------------------------------
// Start

function start() {
  // A token in the address replaces the stored one.
  loadStoredToken();
  readTokenFromFragment();
  setUpTokenForm();
  setUpJobList();
  setUpJobPage();
  window.addEventListener("hashchange", applyRoute);
  connectEvents();
  applyRoute();
  // The home view loads the farm and its nodes itself; a job page needs them
  // for the farm name and the workers' current tasks.
  if (state.route.name === "job") {
    loadFarm();
    loadNodes();
  }
}

start();
