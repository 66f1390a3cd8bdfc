"""The one template engine: Jinja2's sandbox, narrowed to JSON data and bounded.

Why Jinja2 (docs/templates.md): its sandbox is built for templates written by
someone other than the operator, every hook we need is a documented extension
point (attribute and item lookup, calls, binary operators, `finalize`,
`concat`, the code generator class), and a compiled template is a plain Python
object we can cache per version. Django's engine has no sandbox: it calls
methods of whatever it is given and has no bound on loops or output.

What a template may do, on top of the stock ImmutableSandboxedEnvironment:

- read only the data it is rendered with (`template_data`, JSON values): keys
  of objects and items of lists. No attribute of any Python object, no method,
  nothing global but `range` (bounded) and `namespace`;
- call only its own macros, `range()`, `namespace()` and `loop.cycle()`;
- not `include`, `import` or `extend` other templates (layouts do that), and
  not loop recursively;
- use a missing variable only as an error that names it (`is defined` and
  `| default(...)` still work): every missing variable is collected and the
  render fails with all of them, never with a blank;
- spend at most TEMPLATE_RENDER_MAX_SECONDS and TEMPLATE_RENDER_MAX_ITERATIONS
  (loop items and macro calls together) and produce at most
  TEMPLATE_RENDER_MAX_BYTES per value and per part. The bounds are enforced
  inside the engine, where the work happens: every loop iterates through
  `loop_items` (added to the parsed template before compilation), every buffer
  join goes through `concat`, `~` through a guarded join, every binary operator
  and filter checks its result size before allocating it.
"""
