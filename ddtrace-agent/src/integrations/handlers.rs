//! The handler (view) a Python web framework ran for a request, seen from outside. The kernel
//! records the interpreter frames of the calls a handler makes (a statement's first step, an
//! outbound request's write); in them, the first frame of the application's own code inside the
//! framework's dispatcher is the view (a class-based view's method: the framework's wrapper
//! frames in between are skipped). It becomes the view span dd-trace-py makes (`__main__.user`
//! for Flask, `django.view` for Django): a child of the request
//! the thread serves, and the parent of what the view does from the first call seen. It starts
//! at that call and ends where the last call inside it ended: the view's own code before its
//! first call and after its last one is not seen. The request span and the view span get
//! dd-trace-py's entry code origin tags (`_dd.code_origin.*`: the view's file, first line,
//! module and name), as `DD_CODE_ORIGIN_FOR_SPANS_ENABLED` (on by default since ddtrace 4.9)
//! gives them.
//!
//! Once a process is seen serving through a framework, its server spans take the framework's
//! name and component (`flask.request`, `django.request`; `http.server.request` under schema v1),
//! from that request on (see [`framework_request`]).
//!
//! Flask and Django get view spans. FastAPI's dispatcher only tells how the process serves (its
//! requests' names and routes): an async endpoint shares the event loop's thread with other
//! requests, so the thread does not tell which request a call belongs to.
//!
//! The routing table of a process's framework is read from its memory (`super::routes`) when its
//! first view is seen; from then on its requests are named after their route as they arrive.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use super::routes::{django_routes, flask_routes, starlette_routes, CodeOrigin, RouteMatch, RouteReader, RouteTable};
use crate::{
    config::SpanSchema,
    core::{ContextData, ContextTree, SpanKind},
    interpreters::python::{modules, objects::PythonObjects, NamedFrame, PythonRuntime},
};

/// A request no rule matched may be served by a rule added since the table was read: it is
/// read again, at most this often.
const REREAD_AFTER_MISS: Duration = Duration::from_secs(10);

/// A framework's dispatcher: the function (and its file) that calls the application's view.
struct Dispatcher {
    file_suffix: &'static str,
    function_suffix: &'static str,
    /// Frames in this folder between the dispatcher and the view are the framework's wrappers.
    package: &'static str,
    component: &'static str,
    naming: Naming,
    /// dd-trace-py's server span name under schema v0.
    request_v0: &'static str,
    /// Where the route templates come from, for the frameworks whose table we read.
    routes: Option<RouteReader>,
}

/// How dd-trace-py names a framework's view span.
#[derive(Clone, Copy)]
enum Naming {
    /// Name and resource `module.function` (Flask: the function's `__name__`).
    ModuleFunction,
    /// Name `django.view`, resource `module.qualified_name`.
    DjangoView,
    /// No view span: an async framework's event loop thread serves many requests at once, so
    /// the request the thread's innermost context is may not be the view's. Seeing the
    /// dispatcher only tells how the process serves (its requests' names and routes).
    NoViewSpan,
}

const DISPATCHERS: &[Dispatcher] = &[
    // `Flask.dispatch_request` calls the view function of the matched rule.
    Dispatcher {
        file_suffix: "/flask/app.py",
        function_suffix: "dispatch_request",
        package: "/flask/",
        component: "flask",
        naming: Naming::ModuleFunction,
        request_v0: "flask.request",
        routes: Some(flask_routes),
    },
    // `BaseHandler._get_response` calls the resolved view (a class-based view through
    // `View.as_view.<locals>.view` and `View.dispatch`).
    Dispatcher {
        file_suffix: "/django/core/handlers/base.py",
        function_suffix: "_get_response",
        package: "/django/",
        component: "django",
        naming: Naming::DjangoView,
        request_v0: "django.request",
        routes: Some(django_routes),
    },
    // FastAPI's `run_endpoint_function` awaits an `async def` endpoint on the event loop's
    // thread (a plain `def` one runs in a worker thread, where this frame is not).
    Dispatcher {
        file_suffix: "/fastapi/routing.py",
        function_suffix: "run_endpoint_function",
        package: "/fastapi/",
        component: "fastapi",
        naming: Naming::NoViewSpan,
        request_v0: "fastapi.request",
        routes: Some(starlette_routes),
    },
];

/// The view's context frame: above every user stack address (the calls it makes nest inside it),
/// below the request's (which the stream layer puts near the top).
const VIEW_FRAME: u64 = 1 << 63;

/// Distinct view span names kept; past this, new views are named by their framework alone.
const MAX_VIEW_NAMES: usize = 4096;

/// How each process was seen serving its requests (by its views). Shared with the HTTP
/// integration, which names the process's next server spans after it.
static SERVED_BY: Mutex<Option<HashMap<u32, Served>>> = Mutex::new(None);

fn served_by() -> std::sync::MutexGuard<'static, Option<HashMap<u32, Served>>> {
    SERVED_BY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A process's framework, and its routing table when it can be read.
struct Served {
    dispatcher: &'static Dispatcher,
    /// The interpreter the table is read from, and the module of the view first seen.
    source: Option<(Arc<PythonRuntime>, Option<Arc<str>>)>,
    table: Option<RouteTable>,
    read_at: Option<Instant>,
}

impl Served {
    fn new(dispatcher: &'static Dispatcher) -> Self {
        Self { dispatcher, source: None, table: None, read_at: None }
    }

    /// What a view seen in the process tells: its framework, and where its table can be read.
    fn learn(
        &mut self,
        dispatcher: &'static Dispatcher,
        runtime: Option<Arc<PythonRuntime>>,
        module: Option<Arc<str>>,
    ) {
        if !std::ptr::eq(self.dispatcher, dispatcher) {
            // Another framework (an exec, or two in one process): what was read is not its table.
            *self = Self::new(dispatcher);
        }
        if self.source.is_none() {
            self.source = runtime.map(|runtime| (runtime, module));
        }
    }

    /// An async framework's process whose table source is known.
    fn fully_known_async(&self) -> bool {
        matches!(self.dispatcher.naming, Naming::NoViewSpan) && self.source.is_some()
    }

    /// The route of the application that serves `method` `path`: the table is read at the first
    /// request and again when a request matches none (at most every [`REREAD_AFTER_MISS`]).
    fn route(&mut self, tgid: u32, method: &str, path: &str) -> Option<RouteMatch> {
        // Frameworks match the decoded path: an encoded one (or none) is not matched here.
        if method.is_empty() || !path.starts_with('/') || path.contains('%') {
            return None;
        }
        let matched = |table: &Option<RouteTable>| table.as_ref()?.route(method, path);
        if let Some(route) = matched(&self.table) {
            return Some(route);
        }
        let read = self.dispatcher.routes?;
        let (runtime, module) = self.source.as_ref()?;
        if self.read_at.is_some_and(|at| at.elapsed() < REREAD_AFTER_MISS) {
            return None;
        }
        let started = Instant::now();
        let table = PythonObjects::new(runtime).and_then(|objects| read(&objects, module.as_deref()));
        self.read_at = Some(Instant::now());
        let routes = table.as_ref().map(RouteTable::route_count);
        tracing::debug!(pid = tgid, routes, took = ?started.elapsed(), "read the routing table");
        // A read that failed (the app busy changing it, say) keeps the table it had.
        if table.is_some() {
            self.table = table;
        }
        matched(&self.table)
    }
}

/// How a server span of a process known to serve through a framework is named, as dd-trace-py's
/// integration of that framework names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameworkRequest {
    pub name: &'static str,
    pub component: &'static str,
    /// The route that serves the request, when the application's routing table tells.
    pub route: Option<String>,
    /// Its handler's entry code origin, when the table holds the handler (FastAPI's routes).
    pub origin: Option<Arc<CodeOrigin>>,
}

/// The naming of `tgid`'s server span for `method` `path` (no query), when the process is known
/// to serve its requests through a framework.
pub fn framework_request(tgid: u32, schema: SpanSchema, method: &str, path: &str) -> Option<FrameworkRequest> {
    let mut served = served_by();
    let served = served.as_mut()?.get_mut(&tgid)?;
    let (route, origin) = served.route(tgid, method, path).map_or((None, None), |m| (Some(m.route), m.origin));
    let (name, component) = (request_name(served.dispatcher, schema), served.dispatcher.component);
    Some(FrameworkRequest { name, component, route, origin })
}

fn request_name(dispatcher: &Dispatcher, schema: SpanSchema) -> &'static str {
    match schema {
        SpanSchema::V0 => dispatcher.request_v0,
        SpanSchema::V1 => "http.server.request",
    }
}

/// Which processes' files are which modules, learnt as views are seen.
#[derive(Default)]
pub struct Handlers {
    schema: SpanSchema,
    main_scripts: HashMap<u32, Option<PathBuf>>,
    modules: HashMap<(u32, Arc<str>), Option<Arc<str>>>,
}

impl Handlers {
    pub fn new() -> Self {
        Self::default()
    }

    /// How the server spans renamed after their framework are named.
    pub fn set_span_schema(&mut self, schema: SpanSchema) {
        self.schema = schema;
    }

    /// A call of thread `tid` at `ktime_ns` whose caller's `frames` (innermost first) the kernel
    /// recorded: opens the view's context when the frames show one and the thread serves a
    /// request that has none yet. Before the call's own context opens, so that it nests inside.
    pub fn caller_seen(
        &mut self,
        tgid: u32,
        tid: u32,
        ktime_ns: u64,
        frames: &[NamedFrame],
        runtime: Option<Arc<PythonRuntime>>,
        contexts: &mut ContextTree,
    ) {
        // Only in a request this thread serves, and once per request (checked first: most calls
        // come after the view's context opened).
        let Some(innermost) = contexts.innermost_context(tid) else { return };
        if innermost.data.kind != SpanKind::Server {
            return;
        }
        let request = innermost.id;
        // A process known to serve through an async framework has nothing more to learn here.
        if served_by().as_ref().and_then(|s| s.get(&tgid)).is_some_and(Served::fully_known_async) {
            return;
        }
        let Some((dispatcher, view)) = view_in(frames) else { return };
        // The request was named after its route as it arrived, unless the process's framework
        // was not known yet (its first view, seen now).
        let unnamed = !innermost.data.meta.contains_key("http.route");
        let method_and_path = unnamed.then(|| {
            let meta = &innermost.data.meta;
            meta.get("http.method").cloned().zip(meta.get("http.url").and_then(|url| path_of(url)).map(str::to_owned))
        });
        let module = self.module_of(tgid, &view.file);
        let route = {
            let mut served = served_by();
            let served = served.get_or_insert_with(HashMap::new).entry(tgid).or_insert_with(|| Served::new(dispatcher));
            served.learn(dispatcher, runtime, module.clone());
            if matches!(dispatcher.naming, Naming::NoViewSpan) {
                return;
            }
            method_and_path
                .flatten()
                .and_then(|(method, path)| Some((served.route(tgid, &method, &path)?.route, method)))
        };
        let qualified = |function: &str| match &module {
            Some(module) => format!("{module}.{function}"),
            None => function.to_owned(),
        };
        let (name, resource) = match dispatcher.naming {
            Naming::ModuleFunction => {
                let function = view.function.rsplit('.').next().unwrap_or(&view.function);
                let name = interned(qualified(function)).unwrap_or(dispatcher.component);
                (name, name.to_owned())
            }
            Naming::DjangoView => ("django.view", qualified(&view.function)),
            // Returned above: no view span.
            Naming::NoViewSpan => return,
        };
        let file = modules::absolute(tgid, std::path::Path::new(&*view.file)).display().to_string();
        let origin = CodeOrigin { file, line: view.first_line, module, method: view.function.clone() };
        let mut data = ContextData::new(name, dispatcher.component, "", SpanKind::Internal).with_resource(resource);
        data.bounded_by_children = true;
        origin.tag(&mut data);
        let request_name = request_name(dispatcher, self.schema);
        contexts.annotate(tid, request, |request| {
            origin.tag(request);
            (request.name, request.component) = (request_name, dispatcher.component);
            if let Some((route, method)) = route {
                name_after_route(request, &method, route);
            }
        });
        contexts.start(tgid, tid, ktime_ns, VIEW_FRAME, data);
    }

    pub fn process_exited(&mut self, tgid: u32) {
        if let Some(served) = served_by().as_mut() {
            served.remove(&tgid);
        }
        self.main_scripts.remove(&tgid);
        self.modules.retain(|(pid, _), _| *pid != tgid);
    }

    fn module_of(&mut self, tgid: u32, file: &Arc<str>) -> Option<Arc<str>> {
        if let Some(module) = self.modules.get(&(tgid, file.clone())) {
            return module.clone();
        }
        let main = self.main_scripts.entry(tgid).or_insert_with(|| modules::main_script(tgid));
        let module: Option<Arc<str>> = modules::module_name(tgid, file, main.as_deref()).map(Into::into);
        self.modules.insert((tgid, file.clone()), module.clone());
        module
    }
}

/// As dd-trace-py names a request served by a framework's route: `METHOD route` and `http.route`.
pub fn name_after_route(request: &mut ContextData, method: &str, route: String) {
    request.resource = format!("{method} {route}").into();
    request.meta.insert("http.route".into(), route);
}

/// The path of a `scheme://host/path?query` URL.
fn path_of(url: &str) -> Option<&str> {
    let after_scheme = &url[url.find("://")? + 3..];
    let path = &after_scheme[after_scheme.find('/')?..];
    Some(path.split(['?', '#']).next().unwrap_or(path))
}

/// The view in `frames` (innermost first): inside a dispatcher's frame, the first frame that is
/// not the framework's own.
fn view_in(frames: &[NamedFrame]) -> Option<(&'static Dispatcher, &NamedFrame)> {
    frames.iter().enumerate().find_map(|(at, frame)| {
        let dispatcher = DISPATCHERS
            .iter()
            .find(|d| frame.file.ends_with(d.file_suffix) && frame.function.ends_with(d.function_suffix))?;
        // The framework's own folder, where this dispatcher's file is (an application of one's
        // own under a folder named `flask` is not the framework).
        let root = frame.file.strip_suffix(dispatcher.file_suffix)?;
        let in_framework =
            |file: &str| file.strip_prefix(root).is_some_and(|rest| rest.starts_with(dispatcher.package));
        let view = frames[..at].iter().rev().find(|inner| !in_framework(&inner.file))?;
        Some((dispatcher, view))
    })
}

/// A view's span name for the life of the agent (span names are static); `None` once
/// [`MAX_VIEW_NAMES`] are kept.
fn interned(name: String) -> Option<&'static str> {
    static NAMES: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(kept) = names.get(&name) {
        return Some(kept);
    }
    if names.len() >= MAX_VIEW_NAMES {
        return None;
    }
    let kept: &'static str = Box::leak(name.clone().into_boxed_str());
    names.insert(name, kept);
    Some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::test_support::tree_recording_ends;

    fn frame(function: &str, file: &str, first_line: u32) -> NamedFrame {
        NamedFrame {
            function: function.into(),
            file: file.into(),
            line: Some(first_line + 2),
            first_line: Some(first_line),
        }
    }

    #[test]
    fn the_frame_flask_dispatched_to_is_a_view_span_inside_the_request_with_code_origin() {
        let (mut tree, ended) = tree_recording_ends();
        let mut handlers = Handlers::new();
        let flask = "/venv/lib/python3.11/site-packages/flask/app.py";
        let frames = [
            frame("Cursor.execute", "/usr/lib/python3.11/sqlite3/dbapi2.py", 1),
            frame("user", "/srv/shop_app_test_only.py", 12),
            frame("Flask.dispatch_request", flask, 860),
            frame("Flask.full_dispatch_request", flask, 880),
        ];
        let request = ContextData::new("http.request", "http", "web", SpanKind::Server);
        let request = tree.start_root(1, 10, 1_000, u64::MAX, request, None);
        handlers.caller_seen(1, 10, 2_000, &frames, None, &mut tree);
        let query =
            tree.start(1, 10, 2_000, 0x7f00, ContextData::new("sqlite.query", "sqlite", "sql", SpanKind::Client));
        tree.end(10, query, 3_000, |_| {});
        // The same view's next call opens nothing more.
        handlers.caller_seen(1, 10, 3_500, &frames, None, &mut tree);
        tree.end(10, request, 9_000, |_| {});
        let ended = ended.lock().unwrap();
        let names: Vec<&str> = ended.iter().map(|c| c.data.name).collect();
        // No such file in this process: its module is its file name.
        assert_eq!(names, ["sqlite.query", "shop_app_test_only.user", "flask.request"]);
        assert_eq!(ended[2].data.component, "flask");
        let named = |schema| framework_request(1, schema, "GET", "/").map(|f| (f.name, f.component, f.route));
        // No interpreter to read a table from here: named after the framework, no route.
        assert_eq!(named(SpanSchema::V0), Some(("flask.request", "flask", None)));
        assert_eq!(named(SpanSchema::V1), Some(("http.server.request", "flask", None)));
        assert_eq!(framework_request(2, SpanSchema::V0, "GET", "/"), None);
        let (query, view, request) = (&ended[0], &ended[1], &ended[2]);
        assert_eq!((query.parent_id, view.parent_id), (view.id, request.id));
        assert_eq!(view.data.component, "flask");
        assert_eq!(view.end_unix_ns, query.end_unix_ns);
        for span in [view, request] {
            let meta = |key: &str| span.data.meta.get(key).map(String::as_str);
            assert_eq!(meta("_dd.code_origin.type"), Some("entry"));
            assert_eq!(meta("_dd.code_origin.frames.0.file"), Some("/srv/shop_app_test_only.py"));
            assert_eq!(meta("_dd.code_origin.frames.0.line"), Some("12"));
            assert_eq!(meta("_dd.code_origin.frames.0.type"), Some("shop_app_test_only"));
            assert_eq!(meta("_dd.code_origin.frames.0.method"), Some("user"));
        }
    }

    #[test]
    fn a_django_class_based_view_is_its_method_under_django_view() {
        let (mut tree, ended) = tree_recording_ends();
        let django = "/venv/lib/python3.12/site-packages/django";
        let frames = [
            frame("count_hits", "/srv/shop_views_test_only.py", 20),
            frame("Orders.get", "/srv/shop_views_test_only.py", 31),
            frame("View.dispatch", &format!("{django}/views/generic/base.py"), 130),
            frame("View.as_view.<locals>.view", &format!("{django}/views/generic/base.py"), 100),
            frame("BaseHandler._get_response", &format!("{django}/core/handlers/base.py"), 174),
        ];
        let request = ContextData::new("http.request", "http", "web", SpanKind::Server);
        let request = tree.start_root(3, 10, 1_000, u64::MAX, request, None);
        Handlers::new().caller_seen(3, 10, 2_000, &frames, None, &mut tree);
        tree.end(10, request, 9_000, |_| {});
        let ended = ended.lock().unwrap();
        let view = &ended[0];
        assert_eq!((view.data.name, view.data.resource.as_ref()), ("django.view", "shop_views_test_only.Orders.get"));
        assert_eq!(view.data.component, "django");
        assert_eq!(view.data.meta.get("_dd.code_origin.frames.0.method").map(String::as_str), Some("Orders.get"));
    }

    #[test]
    fn an_application_under_a_folder_named_like_the_framework_is_still_the_view() {
        let frames = [
            frame("user", "/home/dev/src/flask/shop/views.py", 7),
            frame("Flask.dispatch_request", "/venv/lib/python3.11/site-packages/flask/app.py", 860),
        ];
        let (dispatcher, view) = view_in(&frames).expect("a view");
        assert_eq!((dispatcher.component, &*view.function), ("flask", "user"));
    }

    #[test]
    fn no_view_outside_a_request_or_without_a_dispatcher() {
        let (mut tree, ended) = tree_recording_ends();
        let mut handlers = Handlers::new();
        let script = [frame("main", "/srv/job.py", 1)];
        let dispatched = [frame("user", "/srv/app.py", 3), frame("Flask.dispatch_request", "/x/flask/app.py", 9)];
        handlers.caller_seen(5, 10, 1_000, &dispatched, None, &mut tree);
        let request = tree.start_root(
            5,
            10,
            1_000,
            u64::MAX,
            ContextData::new("http.request", "http", "web", SpanKind::Server),
            None,
        );
        handlers.caller_seen(5, 10, 2_000, &script, None, &mut tree);
        tree.end(10, request, 3_000, |_| {});
        let ended = ended.lock().unwrap();
        assert_eq!(ended.iter().map(|c| c.data.name).collect::<Vec<_>>(), ["http.request"]);
        assert!(!ended[0].data.meta.contains_key("_dd.code_origin.type"));
    }
}
