// The staff console: a page per hash route (#/leads, #/lead/<id>, …) over the JSON staff API.
// The session is an httpOnly cookie the script never sees; every change sends x-ande-console,
// which the gateway requires of cookie-authenticated changes (CSRF). Everything shown is built
// with DOM nodes and text, never parsed HTML, so a customer's name cannot become markup.
'use strict';

const TZ = 'Asia/Shanghai';
const STATUSES = ['待定', '跟进中', '已签约', '无效'];
const LEVELS = ['A类', 'B类', 'C类'];
const ACTION_NAMES = {
  view_resume: '查看简历', contact_advisor: '联系顾问', book_service: '预约服务', share: '分享',
};
const STATE_NAMES = {
  queued: '排队中', sending: '发送中', sent: '已发送', failed: '失败', waiting_credit: '等待订阅额度',
  digested: '已合并', dropped: '已丢弃',
};
const OUTCOME_NAMES = { created: '新建线索', matched: '匹配已有线索', none: '无线索' };

let me = null;

// ---------- helpers ----------

/** An element with attributes (on* names become listeners) and children (strings are text). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const fmt = new Intl.DateTimeFormat('zh-CN', {
  timeZone: TZ, year: 'numeric', month: '2-digit', day: '2-digit',
  hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
});
const hourFmt = new Intl.DateTimeFormat('zh-CN', { timeZone: TZ, hour: '2-digit', hour12: false });
function when(t) { return t ? fmt.format(new Date(t)) : '—'; }

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const opts = { method, credentials: 'same-origin', headers: { 'x-ande-console': '1' } };
  if (body !== undefined) {
    opts.headers['content-type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  let j = null;
  try { j = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 401 && path !== '/api/staff/session') {
    me = null;
    showLogin('登录已失效，请重新登录。');
    throw new ApiError(401, '未登录');
  }
  if (!r.ok || !j || !j.success) throw new ApiError(r.status, (j && j.message) || r.statusText);
  return j.data;
}

function say(text) { document.getElementById('status').textContent = text || ''; }

function page(title, ...children) {
  const main = document.getElementById('main');
  main.replaceChildren(h('h1', { text: title }), ...children);
  document.title = title + ' · 安得线索控制台';
  main.focus();
}

function table(headers, rows, caption) {
  return h('div', { class: 'table-wrap' },
    h('table', {},
      caption ? h('caption', { class: 'muted', text: caption }) : null,
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col', text: x })))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: headers.length, text: '暂无数据' })))));
}

function badge(cls, text) { return h('span', { class: 'badge s-' + cls, text }); }

function select(name, label, options, value, blank) {
  return h('label', {}, label,
    h('select', { name, id: 'f-' + name },
      blank !== undefined ? h('option', { value: '', text: blank }) : null,
      options.map(([v, t]) => h('option', { value: v, selected: v === value, text: t }))));
}

function input(name, label, attrs) {
  return h('label', {}, label, h('input', Object.assign({ name, id: 'f-' + name }, attrs || {})));
}

// ---------- sign-in ----------

function showLogin(message) {
  document.getElementById('nav').hidden = true;
  document.getElementById('logout').hidden = true;
  document.getElementById('password-link').hidden = true;
  document.getElementById('who').textContent = '';
  const err = h('p', { class: 'error', role: 'alert', id: 'login-error', text: message || '' });
  const form = h('form', { class: 'login', id: 'login-form', 'aria-describedby': 'login-error' },
    input('username', '用户名', { autocomplete: 'username', required: true, maxlength: 64 }),
    input('password', '密码', { type: 'password', autocomplete: 'current-password', required: true, maxlength: 256 }),
    h('button', { type: 'submit', text: '登录' }), err);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    err.textContent = '';
    try {
      me = await api('POST', '/api/staff/session', { username: f.get('username'), password: f.get('password') });
      signedIn();
      if (!location.hash || location.hash === '#/login') location.hash = '#/leads';
      else route();
    } catch (e) {
      err.textContent = e.status === 401 ? '用户名或密码错误' : '登录失败：' + e.message;
    }
  });
  page('员工登录', form);
  form.querySelector('input').focus();
}

function signedIn() {
  document.getElementById('nav').hidden = false;
  document.getElementById('logout').hidden = false;
  document.getElementById('password-link').hidden = false;
  document.getElementById('who').textContent =
    me.username + '（' + (me.role === 'admin' ? '管理员' : '销售') + (me.advisorId ? ' · 顾问 ' + me.advisorId : '') + '）';
  for (const a of document.querySelectorAll('nav a[data-admin]')) a.hidden = me.role !== 'admin';
}

// ---------- overview ----------

function hours24() {
  const now = new Date();
  now.setMinutes(0, 0, 0);
  return Array.from({ length: 24 }, (_, i) => new Date(now.getTime() - (23 - i) * 3600e3));
}

function chart(actions, sent) {
  const NS = 'http://www.w3.org/2000/svg';
  const hours = hours24();
  const count = (list, t) => (list.find((x) => new Date(x.hour).getTime() === t.getTime()) || { count: 0 }).count;
  const a = hours.map((t) => count(actions, t));
  const m = hours.map((t) => count(sent, t));
  const max = Math.max(1, ...a, ...m);
  const W = 720, H = 200, left = 36, bottom = 20, slot = (W - left) / 24;
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H + bottom}`);
  svg.setAttribute('class', 'chart');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `最近24小时：客户行为共 ${a.reduce((x, y) => x + y, 0)} 次，消息共 ${m.reduce((x, y) => x + y, 0)} 条`);
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
  };
  el('text', { x: 0, y: 12 }, String(max));
  el('text', { x: 0, y: H }, '0');
  hours.forEach((t, i) => {
    const x = left + i * slot;
    const bar = (v, dx, cls) => el('rect', { x: x + dx, y: H - (v / max) * (H - 16), width: slot / 2 - 2, height: (v / max) * (H - 16), class: cls });
    bar(a[i], 1, 'a');
    bar(m[i], slot / 2, 'm');
    if (i % 3 === 0) el('text', { x, y: H + 14 }, hourFmt.format(t) + '时');
  });
  return svg;
}

async function overview() {
  const d = await api('GET', '/api/staff/overview');
  const q = d.queue;
  const card = (n, l) => h('div', { class: 'card' }, h('div', { class: 'n', text: n }), h('div', { class: 'l', text: l }));
  const paused = q.pause && q.pause.pausedUntil;
  const lag = d.consumers.map((c) => h('tr', {}, h('td', { text: c.name }), h('td', { text: c.pending }), h('td', { text: c.ackPending })));
  const dead = d.deadLetters.map((c) => h('tr', {}, h('td', { text: c.consumer }), h('td', { text: c.count })));
  const states = Object.entries(q.byState || {}).map(([s, n]) => h('tr', {}, h('td', {}, badge(s, STATE_NAMES[s] || s)), h('td', { text: n })));
  const errors = d.messages.recentErrors.map((e) => h('tr', {},
    h('td', { text: when(e.at) }), h('td', { text: e.event }), h('td', { text: e.errcode }), h('td', { class: 'wrap', text: e.errmsg || '' })));
  page('概览',
    h('div', { class: 'card-row' },
      card(d.leads.actionsLastMinute, '最近1分钟客户行为'),
      card(d.leads.leadsLast24h, '24小时新线索'),
      card(d.leads.leadsTotal, '线索总数'),
      card(q.oldestQueuedSecs + ' 秒', '最久待发通知已等待'),
      card(paused ? '已暂停' : '正常', '消息发送')),
    h('h2', { text: '最近24小时：客户行为与消息（每小时）' }),
    h('p', { class: 'legend' }, h('span', {}, h('i', { style: null, class: 'la' }), '客户行为'), h('span', {}, h('i', { class: 'lm' }), '已发送消息')),
    chart(d.leads.actionsPerHour, d.messages.sentPerHour),
    h('h2', { text: '消费者积压' }), table(['消费者', '未投递', '待确认'], lag),
    h('h2', { text: '死信（处理失败、待运维处理的消息）' }), table(['消费者', '数量'], dead),
    h('p', { class: 'muted', text: '查看、重试或清除死信：andectl dlq ls | show | retry | purge' }),
    h('h2', { text: '通知队列' }), table(['状态', '数量'], states),
    h('h2', { text: '最近错误' }), table(['时间', '事件', 'errcode', 'errmsg'], errors));
}

// ---------- leads ----------

function nextDay(d) {
  if (!d) return '';
  const t = new Date(d + 'T00:00:00+08:00');
  return new Date(t.getTime() + 86400e3).toLocaleDateString('sv-SE', { timeZone: TZ });
}

async function leads(params) {
  const p = new URLSearchParams(params);
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': '筛选线索' },
    input('q', '搜索（姓名/手机/客户编号）', { type: 'search', value: p.get('q') || '', maxlength: 64 }),
    me.advisorId ? null : input('advisorId', '顾问ID', { value: p.get('advisorId') || '', maxlength: 128 }),
    select('status', '状态', STATUSES.map((s) => [s, s]), p.get('status') || '', '全部'),
    select('level', '级别', LEVELS.map((s) => [s, s]), p.get('level') || '', '全部'),
    input('createdFrom', '创建于（起）', { type: 'date', value: p.get('createdFrom') || '' }),
    input('createdTo', '创建于（止）', { type: 'date', value: p.get('createdTo') || '' }),
    input('touchedFrom', '最近互动（起）', { type: 'date', value: p.get('touchedFrom') || '' }),
    input('touchedTo', '最近互动（止）', { type: 'date', value: p.get('touchedTo') || '' }),
    select('sort', '排序', [['created', '按创建时间'], ['lastTouch', '按最近互动']], p.get('sort') || 'created'),
    h('button', { type: 'submit', text: '查询' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) f.set(k, v);
    location.hash = '#/leads?' + f.toString();
  });
  const q = new URLSearchParams();
  for (const k of ['q', 'advisorId', 'status', 'level', 'sort', 'createdFrom', 'touchedFrom', 'cursor']) if (p.get(k)) q.set(k, p.get(k));
  if (p.get('createdTo')) q.set('createdUntil', nextDay(p.get('createdTo')));
  if (p.get('touchedTo')) q.set('touchedUntil', nextDay(p.get('touchedTo')));
  const d = await api('GET', '/api/staff/leads?' + q.toString());
  const rows = d.leads.map((l) => h('tr', {},
    h('td', {}, h('a', { href: '#/lead/' + l.id, text: l.customerCode })),
    h('td', { class: 'phone', text: l.phone }),
    h('td', { text: l.name || '—' }),
    h('td', { text: l.ownerAdvisorId }),
    h('td', { text: l.status }),
    h('td', { text: l.level }),
    h('td', { text: l.touchCount }),
    h('td', { text: when(l.lastTouchAt) }),
    h('td', { text: when(l.createdAt) })));
  const pager = h('div', { class: 'pager' },
    p.get('cursor') ? h('a', { href: '#/leads?' + withParam(p, 'cursor', ''), text: '回到第一页' }) : null,
    d.nextCursor ? h('a', { href: '#/leads?' + withParam(p, 'cursor', d.nextCursor), text: '下一页' }) : h('span', { class: 'muted', text: '没有更多了' }));
  page('客户线索', form,
    table(['客户编号', '手机号', '姓名', '顾问', '状态', '级别', '互动次数', '最近互动', '创建时间'], rows, `本页 ${d.leads.length} 条`),
    pager);
}

function withParam(p, k, v) {
  const c = new URLSearchParams(p);
  if (v) c.set(k, v); else c.delete(k);
  return c.toString();
}

function deliveryItems(delivery) {
  const notes = delivery.notifications.map((n) => h('li', {},
    badge(n.state, STATE_NAMES[n.state] || n.state), ' 通知顾问 ', n.advisorId,
    ' · 尝试 ', String(n.attempts), ' 次',
    n.msgid ? ' · msgid ' + n.msgid : '',
    n.errcode ? ' · errcode ' + n.errcode + (n.errmsg ? '（' + n.errmsg + '）' : '') : '',
    ' · ', when(n.updatedAt)));
  const log = delivery.log.map((e) => h('li', { class: 'muted' },
    when(e.at), ' ', e.event, e.errcode ? ' errcode ' + e.errcode : '', e.msgid ? ' msgid ' + e.msgid : ''));
  return [h('ul', {}, notes.length ? notes : h('li', { class: 'muted', text: '没有通知' })),
    log.length ? h('details', {}, h('summary', { text: '发送记录（' + log.length + '）' }), h('ul', {}, log)) : null];
}

function changeForm(lead) {
  const status = h('p', { role: 'status', 'aria-live': 'polite' });
  const form = h('form', { class: 'stack', 'aria-label': '修改线索' },
    select('status', '状态', withCurrent(STATUSES, lead.status), lead.status),
    select('level', '级别', withCurrent(LEVELS, lead.level), lead.level),
    me.advisorId ? null : input('ownerAdvisorId', '负责顾问', { value: lead.ownerAdvisorId, maxlength: 128 }),
    input('remark', '备注', { value: lead.remark, maxlength: 500 }),
    h('button', { type: 'submit', text: '保存修改' }), status);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = {};
    for (const k of ['status', 'level', 'ownerAdvisorId', 'remark']) {
      const v = f.get(k);
      const was = k === 'ownerAdvisorId' ? lead.ownerAdvisorId : lead[k];
      if (v !== null && v !== '' && v !== was) body[k] = v;
    }
    if (!Object.keys(body).length) { status.textContent = '没有修改'; return; }
    try {
      const r = await api('POST', '/api/staff/leads/' + lead.id, body);
      status.textContent = '已提交，正在生效…';
      for (let i = 0; i < 20; i++) {
        const d = await api('GET', '/api/staff/leads/' + lead.id);
        if (d.changes.some((c) => c.eventId === r.eventId)) { say('修改已生效'); route(true); return; }
        await new Promise((res) => setTimeout(res, 250));
      }
      status.textContent = '已提交，稍后刷新可见';
    } catch (e) { status.textContent = '保存失败：' + e.message; }
  });
  return form;
}

function withCurrent(list, current) {
  const all = list.includes(current) ? list : [current, ...list];
  return all.map((s) => [s, s]);
}

async function lead(id) {
  const d = await api('GET', '/api/staff/leads/' + encodeURIComponent(id));
  const l = d.lead;
  const facts = h('dl', { class: 'facts' },
    ...[['客户编号', l.customerCode], ['手机号', l.phone], ['姓名', l.name || '—'], ['负责顾问', l.ownerAdvisorId],
      ['状态', l.status], ['级别', l.level], ['来源', l.source], ['备注', l.remark || '—'],
      ['互动次数', l.touchCount], ['最近互动', when(l.lastTouchAt)], ['创建时间', when(l.createdAt)]]
      .flatMap(([k, v]) => [h('dt', { text: k }), h('dd', { text: v })]));
  const events = d.actions.map((a) => h('li', {},
    h('strong', { text: when(a.occurredAt) }), ' ',
    ACTION_NAMES[a.actionType] || a.actionType, ' · 顾问 ', a.advisorId,
    a.customerName ? ' · ' + a.customerName : '', ' → ',
    badge(a.outcomeKind, OUTCOME_NAMES[a.outcomeKind] || a.outcomeKind),
    a.linked ? h('span', { class: 'muted', text: '（会话合并）' }) : '',
    deliveryItems(a.delivery)));
  const changes = d.changes.map((c) => h('li', {}, when(c.changedAt), ' ', c.changedBy, '：',
    Object.entries(c.changes).map(([k, v]) => `${k} ${v.from ?? ''} → ${v.to}`).join('；') || '无变化'));
  page('线索 ' + l.customerCode,
    h('p', {}, h('a', { href: '#/leads', text: '← 返回线索列表' })),
    facts, h('h2', { text: '修改' }), changeForm(l),
    h('h2', { text: '时间线：客户行为 → 线索 → 消息' }),
    h('ol', { class: 'timeline', id: 'timeline' }, events.length ? events : h('li', { text: '暂无行为' })),
    h('h2', { text: '修改记录' }), h('ul', {}, changes.length ? changes : h('li', { class: 'muted', text: '暂无修改' })));
}

// ---------- advisors, notifications, users ----------

async function advisors() {
  const d = await api('GET', '/api/staff/advisors');
  const rows = d.advisors.map((a) => h('tr', {},
    h('td', { text: a.advisorId }),
    h('td', { class: 'wrap', text: a.bindings.map((b) => b.openid).join('，') || '—' }),
    h('td', { class: 'wrap', text: a.credits.map((c) => `${c.templateId}: ${c.longTerm ? '长期' : c.credits}`).join('；') || '—' }),
    h('td', {}, h('a', { href: '#/notifications?state=waiting_credit&advisorId=' + encodeURIComponent(a.advisorId), text: String(a.waiting) })),
    h('td', {}, h('a', { href: '#/notifications?state=failed&advisorId=' + encodeURIComponent(a.advisorId), text: String(a.failed) }))));
  page('顾问', table(['顾问ID', '绑定的微信用户', '订阅额度（模板）', '等待额度', '发送失败'], rows));
}

async function notifications(params) {
  const p = new URLSearchParams(params);
  const state = p.get('state') || 'failed';
  const form = h('form', { class: 'filters', 'aria-label': '筛选通知' },
    select('state', '状态', Object.entries(STATE_NAMES), state),
    me.advisorId ? null : input('advisorId', '顾问ID', { value: p.get('advisorId') || '', maxlength: 128 }),
    h('button', { type: 'submit', text: '查询' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) f.set(k, v);
    location.hash = '#/notifications?' + f.toString();
  });
  const q = new URLSearchParams({ state });
  if (p.get('advisorId')) q.set('advisorId', p.get('advisorId'));
  const d = await api('GET', '/api/staff/notifications?' + q.toString());
  const rows = d.notifications.map((n) => h('tr', {},
    h('td', { text: when(n.createdAt) }), h('td', { text: n.advisorId }),
    h('td', {}, badge(n.state, STATE_NAMES[n.state] || n.state)),
    h('td', { text: n.attempts }), h('td', { text: n.errcode ?? '' }), h('td', { class: 'wrap', text: n.errmsg || '' }),
    h('td', { text: n.msgid || '' }),
    h('td', {}, n.state === 'failed'
      ? h('button', { type: 'button', 'data-retry': n.id, 'aria-label': '重试 ' + n.id, onclick: () => retry(n.id) }, '重试')
      : '')));
  const controls = me.role === 'admin' ? sendingControls() : null;
  page('通知', form, controls, table(['创建时间', '顾问', '状态', '尝试', 'errcode', 'errmsg', 'msgid', '操作'], rows));
}

async function retry(id) {
  try {
    await api('POST', '/api/staff/notifications/' + id + '/retry');
    say('已重新排队，稍后发送');
    route(true);
  } catch (e) { say('重试失败：' + e.message); }
}

function sendingControls() {
  const act = async (paused) => {
    try {
      await api('POST', '/api/staff/sending', paused ? { paused: true, minutes: 60 } : { paused: false });
      say(paused ? '已暂停发送 60 分钟' : '已恢复发送');
    } catch (e) { say('操作失败：' + e.message); }
  };
  return h('p', {},
    h('button', { type: 'button', class: 'secondary', onclick: () => act(true) }, '暂停发送60分钟'), ' ',
    h('button', { type: 'button', class: 'secondary', onclick: () => act(false) }, '恢复发送'));
}

async function users() {
  const d = await api('GET', '/api/staff/users');
  const toggle = async (u) => {
    try { await api('POST', '/api/staff/users/' + encodeURIComponent(u.username), { disabled: !u.disabled }); route(); }
    catch (e) { say('操作失败：' + e.message); }
  };
  const rows = d.users.map((u) => h('tr', {},
    h('td', { text: u.username }), h('td', { text: u.role === 'admin' ? '管理员' : '销售' }),
    h('td', { text: u.advisorId || '—' }), h('td', { text: u.disabled ? '已停用' : '正常' }),
    h('td', {}, u.username === me.username ? '' :
      h('button', { type: 'button', class: u.disabled ? 'secondary' : 'danger', onclick: () => toggle(u) }, u.disabled ? '启用' : '停用'))));
  const status = h('p', { role: 'status', 'aria-live': 'polite', id: 'new-user' });
  const form = h('form', { class: 'stack', 'aria-label': '新增员工' },
    input('username', '用户名', { required: true, maxlength: 64, autocomplete: 'off', pattern: '\\S+' }),
    select('role', '角色', [['sales', '销售'], ['admin', '管理员']], 'sales'),
    input('advisorId', '顾问ID（销售可选）', { maxlength: 128 }),
    h('button', { type: 'submit', text: '新增' }), status);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = { username: f.get('username'), role: f.get('role') };
    if (f.get('advisorId')) body.advisorId = f.get('advisorId');
    try {
      const made = await api('POST', '/api/staff/users', body);
      await route(true);
      // The generated password is shown once, to hand to the new colleague.
      document.getElementById('new-user').textContent =
        `已创建 ${made.username}，初始密码：${made.password}（只显示这一次，请转交本人）`;
    } catch (e) { status.textContent = '创建失败：' + e.message; }
  });
  page('员工账号', table(['用户名', '角色', '顾问', '状态', '操作'], rows), h('h2', { text: '新增员工' }), form);
}

async function password() {
  const status = h('p', { role: 'status', 'aria-live': 'polite', id: 'password-status' });
  const form = h('form', { class: 'login', 'aria-label': '修改密码' },
    input('currentPassword', '当前密码', { type: 'password', required: true, autocomplete: 'current-password', maxlength: 256 }),
    input('newPassword', '新密码（至少12位，至少5种字符，不含用户名）', { type: 'password', required: true, minlength: 12, autocomplete: 'new-password', maxlength: 256 }),
    input('confirmPassword', '再次输入新密码', { type: 'password', required: true, minlength: 12, autocomplete: 'new-password', maxlength: 256 }),
    h('button', { type: 'submit', text: '修改密码' }), status);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    if (f.get('newPassword') !== f.get('confirmPassword')) { status.textContent = '两次输入的新密码不一致'; return; }
    try {
      await api('POST', '/api/staff/me/password', { currentPassword: f.get('currentPassword'), newPassword: f.get('newPassword') });
      form.reset();
      status.textContent = '密码已修改，其他设备上的登录已失效';
    } catch (e) { status.textContent = '修改失败：' + e.message; }
  });
  page('修改密码', form);
}

async function deadLetters() {
  const d = await api('GET', '/api/staff/dead-letters');
  const act = async (seq, what) => {
    if (what === 'purge' && !window.confirm('永久删除死信 #' + seq + '？')) return;
    try {
      await api('POST', `/api/staff/dead-letters/${seq}/${what}`);
      say(what === 'retry' ? '死信 #' + seq + ' 已重新投递' : '死信 #' + seq + ' 已清除');
      route(true);
    } catch (e) { say('操作失败：' + e.message); }
  };
  const rows = d.deadLetters.flatMap((l) => {
    const detail = h('tr', { hidden: true, id: 'dl-' + l.seq },
      h('td', { colspan: 7 }, h('pre', { class: 'wrap', text: JSON.stringify(l.event || { decodeError: l.decodeError }, null, 2) })));
    const show = () => { detail.hidden = !detail.hidden; };
    return [h('tr', {},
      h('td', { text: '#' + l.seq }), h('td', { text: when(l.storedAt) }), h('td', { text: l.consumer }),
      h('td', { class: 'wrap', text: l.reason }), h('td', { text: l.type || '—' }),
      h('td', { class: 'wrap', text: l.original.subject }),
      h('td', {},
        h('button', { type: 'button', class: 'secondary', 'aria-controls': 'dl-' + l.seq, onclick: show }, '查看'), ' ',
        h('button', { type: 'button', 'data-dlq-retry': l.seq, onclick: () => act(l.seq, 'retry') }, '重试'), ' ',
        h('button', { type: 'button', class: 'danger', onclick: () => act(l.seq, 'purge') }, '清除'))),
    detail];
  });
  page('死信', h('p', { class: 'muted', text: `共 ${d.total} 条（显示最新的 ${d.deadLetters.length} 条）。先修复原因再重试，否则消息会再次进入死信。` }),
    table(['序号', '时间', '消费者', '原因', '事件', '原主题', '操作'], rows));
}

// ---------- routing ----------

const PAGES = { overview, leads, advisors, notifications, users, password, 'dead-letters': deadLetters };

/** Show the page the hash names; `keep` leaves the status line (a refresh after an action). */
async function route(keep) {
  if (!me) {
    try { me = await api('GET', '/api/staff/me'); signedIn(); } catch (_) { return; }
  }
  const [path, query] = (location.hash.replace(/^#\/?/, '') || 'leads').split('?');
  const [name, arg] = path.split('/');
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === (name === 'lead' ? 'leads' : name)) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (keep !== true) say('');
  try {
    if (name === 'lead' && arg) await lead(decodeURIComponent(arg));
    else await (PAGES[name] || leads)(query || '');
  } catch (e) {
    if (e.status !== 401) page('出错了', h('p', { class: 'error', role: 'alert', text: e.message }));
  }
}

document.getElementById('logout').addEventListener('click', async () => {
  try { await api('POST', '/api/staff/session/end'); } catch (_) { /* signed out anyway */ }
  me = null;
  showLogin('已退出');
});
window.addEventListener('hashchange', () => route());
route();
