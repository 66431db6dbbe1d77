//! `devns k8s device-plugin`: the kubelet's device plugin API (v1beta1,
//! gRPC over unix sockets, tonic). One plugin socket per class in the
//! kubelet's directory, registered with the kubelet; `ListAndWatch` sends
//! each class's devices again whenever the daemon reports a change (its
//! `events`), `Allocate` answers the CDI names of `devns cdi generate`'s
//! spec, which the runtime turns into devns's hook. The decisions are
//! `devns_core::deviceplugin`'s.

use anyhow::{Context, Result, anyhow, bail};
use devns_core::api::DeviceRow;
use devns_core::deviceplugin::{Class, Offered, cdi_names, offered, preferred};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// The generated API (`proto/deviceplugin.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod api {
    tonic::include_proto!("v1beta1");
}

use api::device_plugin_server::{DevicePlugin, DevicePluginServer};

/// The API version registered.
pub const VERSION: &str = "v1beta1";
/// The kubelet's directory of plugin sockets.
pub const KUBELET_DIR: &str = "/var/lib/kubelet/device-plugins";

pub struct Options {
    pub dir: PathBuf,
    pub classes: Vec<Class>,
    pub kind: String,
    pub loop_slots: usize,
    pub socket: PathBuf,
}

/// What every class offers now: one list per class.
type Lists = Vec<Vec<Offered>>;

struct Plugin {
    index: usize,
    class: Class,
    kind: String,
    lists: watch::Receiver<Lists>,
}

type DeviceStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<api::ListAndWatchResponse, Status>> + Send>>;

/// What the plugin does beyond the required calls: a preferred allocation.
fn options() -> api::DevicePluginOptions {
    api::DevicePluginOptions { pre_start_required: false, get_preferred_allocation_available: true }
}

fn to_api(list: &[Offered]) -> api::ListAndWatchResponse {
    let devices = list
        .iter()
        .map(|o| api::Device {
            id: o.id.clone(),
            health: if o.healthy { "Healthy" } else { "Unhealthy" }.into(),
            topology: None,
        })
        .collect();
    api::ListAndWatchResponse { devices }
}

#[tonic::async_trait]
impl DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<api::DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(&self, _: Request<api::Empty>) -> Result<Response<Self::ListAndWatchStream>, Status> {
        use tokio_stream::StreamExt;
        let index = self.index;
        // The list now, then again at each change of this class's list.
        let stream = tokio_stream::wrappers::WatchStream::new(self.lists.clone())
            .map(move |lists| lists.get(index).cloned().unwrap_or_default());
        let mut last: Option<Vec<Offered>> = None;
        let stream = stream.filter_map(move |list| {
            if last.as_ref() == Some(&list) {
                return None;
            }
            last = Some(list.clone());
            Some(Ok(to_api(&list)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        req: Request<api::PreferredAllocationRequest>,
    ) -> Result<Response<api::PreferredAllocationResponse>, Status> {
        let list = self.lists.borrow().get(self.index).cloned().unwrap_or_default();
        let mut container_responses = Vec::new();
        for c in req.into_inner().container_requests {
            let ids =
                preferred(&self.class, &list, &c.available_device_i_ds, &c.must_include_device_i_ds, c.allocation_size)
                    .map_err(Status::invalid_argument)?;
            container_responses.push(api::ContainerPreferredAllocationResponse { device_i_ds: ids });
        }
        Ok(Response::new(api::PreferredAllocationResponse { container_responses }))
    }

    async fn allocate(&self, req: Request<api::AllocateRequest>) -> Result<Response<api::AllocateResponse>, Status> {
        let list = self.lists.borrow().get(self.index).cloned().unwrap_or_default();
        let mut container_responses = Vec::new();
        for c in req.into_inner().container_requests {
            let names = cdi_names(&self.class, &list, &c.devices_ids, &self.kind).map_err(Status::invalid_argument)?;
            tracing::info!(resource = %self.class.resource, devices = ?c.devices_ids, cdi = ?names, "allocated");
            container_responses.push(api::ContainerAllocateResponse {
                cdi_devices: names.into_iter().map(|name| api::CdiDevice { name }).collect(),
                ..Default::default()
            });
        }
        Ok(Response::new(api::AllocateResponse { container_responses }))
    }

    async fn pre_start_container(
        &self,
        _: Request<api::PreStartContainerRequest>,
    ) -> Result<Response<api::PreStartContainerResponse>, Status> {
        Ok(Response::new(api::PreStartContainerResponse {}))
    }
}

/// Every class's devices, from the daemon's `ls`.
fn lists(socket: &Path, classes: &[Class], slots: usize) -> Result<Lists> {
    let mut c = crate::client::Client::connect(socket)?;
    let rows: Vec<DeviceRow> = serde_json::from_value(c.call(serde_json::json!({ "op": "ls" }), &[])?)?;
    Ok(classes.iter().map(|class| offered(class, &rows, slots)).collect())
}

/// Follows the daemon's events on a thread of its own (the client is
/// blocking), sending the lists again after each; a lost daemon is
/// connected to again each second, its classes' lists kept meanwhile.
fn follow(socket: PathBuf, classes: Vec<Class>, slots: usize, tx: watch::Sender<Lists>) {
    loop {
        let followed = (|| -> Result<()> {
            let mut events = crate::client::Client::connect(&socket)?;
            events.call(serde_json::json!({ "op": "events" }), &[])?;
            tx.send_replace(lists(&socket, &classes, slots)?);
            while events.next_line()?.is_some() {
                tx.send_replace(lists(&socket, &classes, slots)?);
            }
            Ok(())
        })();
        if tx.is_closed() {
            return;
        }
        if let Err(e) = followed {
            tracing::warn!(error = %format!("{e:#}"), "lost the devns daemon; connecting again");
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// A gRPC channel over the unix socket at `path`.
pub async fn channel(path: PathBuf) -> Result<tonic::transport::Channel> {
    // The URI is tonic's formality: the connector decides where it goes.
    let endpoint = tonic::transport::Endpoint::try_from("http://[::]:0")?;
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .context("cannot connect")
}

pub fn run(opts: Options) -> Result<i32> {
    if opts.classes.is_empty() {
        return Err(anyhow!("no class to serve"));
    }
    let first = lists(&opts.socket, &opts.classes, opts.loop_slots).with_context(|| {
        format!("cannot list devns's devices (is the daemon running at {}?)", opts.socket.display())
    })?;
    let (tx, rx) = watch::channel(first);
    {
        let (socket, classes, slots) = (opts.socket.clone(), opts.classes.clone(), opts.loop_slots);
        std::thread::Builder::new().name("events".into()).spawn(move || follow(socket, classes, slots, tx))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio")?;
    rt.block_on(serve(opts, rx))
}

async fn serve(opts: Options, rx: watch::Receiver<Lists>) -> Result<i32> {
    let mut tasks = Vec::new();
    for (index, class) in opts.classes.iter().enumerate() {
        let plugin = Plugin { index, class: class.clone(), kind: opts.kind.clone(), lists: rx.clone() };
        tasks.push(tokio::spawn(keep_registered(opts.dir.clone(), plugin)));
    }
    for t in tasks {
        t.await.context("a plugin server")??;
    }
    Ok(0)
}

/// A file's identity: a socket made again is another one.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (std::os::unix::fs::MetadataExt::dev(&m), std::os::unix::fs::MetadataExt::ino(&m)))
}

/// How often the plugin looks whether the kubelet restarted.
const KUBELET_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves `plugin` on its socket in `dir` and registers it with the
/// kubelet there, again each time the kubelet restarts: a kubelet that
/// starts removes every socket in its directory and makes its own again,
/// so a plugin socket gone, or a `kubelet.sock` that is another, means
/// serving anew and registering again (as the kubelet's own plugins do).
/// A kubelet not there yet is waited for.
async fn keep_registered(dir: PathBuf, plugin: Plugin) -> Result<()> {
    let class = plugin.class.clone();
    let path = dir.join(class.socket_name());
    let kubelet = dir.join("kubelet.sock");
    let service = DevicePluginServer::new(plugin);
    let mut waited = false;
    loop {
        let Some(kubelet_id) = identity(&kubelet) else {
            if !waited {
                tracing::info!(kubelet = %kubelet.display(), "waiting for the kubelet");
                waited = true;
            }
            tokio::time::sleep(KUBELET_POLL).await;
            continue;
        };
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed a stale plugin socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
        let listener =
            tokio::net::UnixListener::bind(&path).with_context(|| format!("cannot bind {}", path.display()))?;
        let own_id = identity(&path);
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let server = tokio::spawn(
            tonic::transport::Server::builder().add_service(service.clone()).serve_with_incoming(incoming),
        );
        // Registered once it serves: the kubelet calls it back at once.
        match register(&kubelet, &class).await {
            Ok(()) => {
                tracing::info!(resource = %class.resource, socket = %path.display(), "registered with the kubelet")
            }
            Err(Refused(e)) => return Err(e),
            Err(Unreachable(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot register with the kubelet; trying again");
                server.abort();
                tokio::time::sleep(KUBELET_POLL).await;
                continue;
            }
        }
        // Served until the kubelet is another, or took the socket away.
        while identity(&kubelet) == Some(kubelet_id) && identity(&path) == own_id && !server.is_finished() {
            tokio::time::sleep(KUBELET_POLL).await;
        }
        if server.is_finished() {
            server.await.context("a plugin server")?.context("a plugin server")?;
            bail!("the plugin server of {} ended", class.resource);
        }
        // Its listener ends here; a connection of the old kubelet's is
        // served until that kubelet closes it.
        server.abort();
        tracing::info!(resource = %class.resource, "the kubelet restarted; serving and registering again");
        waited = false;
    }
}

enum RegisterError {
    /// The kubelet answered no: said, and the plugin stops.
    Refused(anyhow::Error),
    /// No answer: tried again once the kubelet is back.
    Unreachable(anyhow::Error),
}
use RegisterError::{Refused, Unreachable};

async fn register(kubelet: &Path, class: &Class) -> Result<(), RegisterError> {
    let ch = channel(kubelet.to_owned())
        .await
        .with_context(|| format!("the kubelet at {}", kubelet.display()))
        .map_err(Unreachable)?;
    let req = api::RegisterRequest {
        version: VERSION.into(),
        endpoint: class.socket_name(),
        resource_name: class.resource.clone(),
        options: Some(options()),
    };
    match api::registration_client::RegistrationClient::new(ch).register(req).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::Unavailable => {
            Err(Unreachable(anyhow!("the kubelet at {}: {}", kubelet.display(), s.message())))
        }
        Err(s) => Err(Refused(anyhow!("the kubelet refused {}: {}", class.resource, s.message()))),
    }
}
