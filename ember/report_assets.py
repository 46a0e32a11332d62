"""The style sheet and script inlined into every report page (kept out of the page's Python so
each reads as what it is). The script adds zoom (buttons, ctrl+wheel), drag to pan, a node's
facts in the side panel on click (from the page's JSON), ``#node=N`` links, and marks
``body[data-ready]`` when done — what the browser test looks for."""

CSS = """
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;
  background:#fafafa}
header{padding:10px 18px;background:#2d2d2d;color:#eee}
header h1{font-size:18px;margin:0 0 2px}
header .facts{color:#bbb}
main{padding:10px 18px}
h2{font-size:15px;margin:14px 0 6px}
.top{display:grid;grid-template-columns:fit-content(46vw) minmax(0,1fr) 320px;gap:14px;
  align-items:start}
#viewport{height:calc(100vh - 150px);min-height:420px;max-width:46vw;overflow:auto;
  border:1px solid #ccc;background:#fff;cursor:grab}
#viewport.dragging{cursor:grabbing}
.tools{margin:0 0 4px}
.tools button{font:inherit;padding:1px 8px;margin-right:4px}
.panel{background:#fff;border:1px solid #ccc;padding:8px 10px;margin-bottom:10px}
table{border-collapse:collapse}
td,th{padding:1px 8px 1px 0;text-align:left;vertical-align:top}
td.num,th.num{text-align:right}
.note{color:#666;font-size:12px}
.charts figure{margin:0 0 12px;background:#fff;border:1px solid #ccc;padding:6px 8px;
  max-width:760px}
.charts figure h2{margin:0 0 4px}
.charts svg{width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#555}
svg text{font:11px system-ui,sans-serif;fill:#222}
#graph text{text-anchor:middle;font-weight:600}
#graph text.sub{font-weight:400;fill:#555;font-size:10px}
#graph .node rect{stroke:#555;stroke-width:1}
#graph .node.hot text{fill:#fff}
#graph .node.numpy rect{stroke:#c0392b;stroke-dasharray:4 2}
#graph .node.selected rect{stroke:#0a58ca;stroke-width:3}
#graph .node{cursor:pointer}
#graph .io rect{fill:#fff;stroke:#888}
#graph .edge{fill:none;stroke:#999;stroke-width:1.2}
.plotbg{fill:#fcfcfc;stroke:#bbb}
.memory .block{fill-opacity:.55;stroke:#333;stroke-width:.4}
.memory .live{fill:none;stroke:#111;stroke-width:1.2}
.arena{stroke:#c0392b;stroke-width:1.5}
.bound{stroke:#0a58ca;stroke-width:1.5;stroke-dasharray:6 3}
.mark{font-weight:600}
.tick{fill:#555;font-size:10px}
.grid{stroke:#e3e3e3}
.roof{fill:none;stroke:#c0392b;stroke-width:2}
.roofline .point{fill:#f28e2b;fill-opacity:.75;stroke:#7a3d00;cursor:pointer}
.roofline .point.attainable{fill:#fff;fill-opacity:.4;stroke-width:1.5}
.legend{max-width:340px}
.legend span{display:inline-block;width:12px;height:12px;border:1px solid #555;
  vertical-align:middle;margin:0 3px 0 10px}
"""

SCRIPT = r"""
(function(){
  var facts = JSON.parse(document.getElementById('facts').textContent);
  var vp = document.getElementById('viewport'), svg = document.getElementById('graph');
  var w0 = +svg.dataset.width, h0 = +svg.dataset.height, scale = 1;
  function zoom(s, cx, cy){        // keep the graph point under (cx, cy) where it is
    var px = (vp.scrollLeft + cx) / scale, py = (vp.scrollTop + cy) / scale;
    scale = Math.min(4, Math.max(0.05, s));
    svg.setAttribute('width', w0 * scale);
    svg.setAttribute('height', h0 * scale);
    vp.scrollLeft = px * scale - cx;
    vp.scrollTop = py * scale - cy;
    document.getElementById('zoom').textContent = Math.round(scale * 100) + '%';
  }
  function zoomCentre(s){ zoom(s, vp.clientWidth / 2, vp.clientHeight / 2); }
  document.getElementById('zin').onclick = function(){ zoomCentre(scale * 1.25); };
  document.getElementById('zout').onclick = function(){ zoomCentre(scale / 1.25); };
  document.getElementById('zfit').onclick = function(){
    zoom(Math.min(vp.clientWidth / w0, vp.clientHeight / h0), 0, 0);
  };
  vp.addEventListener('wheel', function(e){
    if (!e.ctrlKey) return;
    e.preventDefault();
    var r = vp.getBoundingClientRect();
    zoom(scale * (e.deltaY < 0 ? 1.15 : 1 / 1.15), e.clientX - r.left, e.clientY - r.top);
  }, {passive: false});
  var drag = null;
  vp.addEventListener('mousedown', function(e){
    drag = [e.clientX, e.clientY, vp.scrollLeft, vp.scrollTop];
    vp.classList.add('dragging');
  });
  window.addEventListener('mouseup', function(){ drag = null; vp.classList.remove('dragging'); });
  window.addEventListener('mousemove', function(e){
    if (!drag) return;
    vp.scrollLeft = drag[2] - (e.clientX - drag[0]);
    vp.scrollTop = drag[3] - (e.clientY - drag[1]);
  });
  var panel = document.getElementById('detail');
  function row(table, key, value){
    var tr = table.insertRow(), th = document.createElement('th');
    th.textContent = key;
    tr.appendChild(th);
    tr.insertCell().textContent = value;
  }
  function show(i, reveal){
    var f = facts[i], t = document.createElement('table');
    document.querySelectorAll('#graph .node.selected').forEach(function(n){
      n.classList.remove('selected');
    });
    var g = document.querySelector('#graph .node[data-index="' + i + '"]');
    g.classList.add('selected');
    if (reveal) g.querySelector('rect').scrollIntoView({block: 'center', inline: 'center'});
    row(t, 'node', f.name);
    row(t, 'op', f.op);
    f.inputs.forEach(function(s){ row(t, 'input', s); });
    f.outputs.forEach(function(s){ row(t, 'output', s); });
    row(t, 'MACs', f.macs.toLocaleString('en'));
    row(t, 'bytes moved', f.bytes_moved.toLocaleString('en'));
    row(t, 'path', f.path);
    if (f.ms !== null){
      row(t, 'time', f.ms.toFixed(3) + ' ms (' + (100 * f.share).toFixed(1) + '%)');
      if (f.macs > 0) row(t, 'GFLOP/s', f.gflops.toFixed(2));
    }
    panel.replaceChildren(t);
  }
  document.querySelectorAll('#graph .node').forEach(function(n){
    n.addEventListener('click', function(){ show(+n.dataset.index, false); });
    n.addEventListener('keydown', function(e){ if (e.key === 'Enter') show(+n.dataset.index); });
  });
  document.querySelectorAll('.roofline .point, tr[data-index]').forEach(function(n){
    n.addEventListener('click', function(){ show(+n.dataset.index, true); });
  });
  var linked = location.hash.match(/^#node=(\d+)$/);
  if (linked && facts[+linked[1]]) show(+linked[1], true);
  document.body.dataset.ready = String(facts.length);
})();
"""
