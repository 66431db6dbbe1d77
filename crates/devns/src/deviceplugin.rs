//! `devns k8s device-plugin`: the kubelet's device plugin API (v1beta1,
//! gRPC over unix sockets, tonic). One plugin socket per class in the
//! kubelet's directory, registered with the kubelet; `ListAndWatch` sends
//! each class's devices again whenever the daemon reports a change (its
//! `events`), `Allocate` answers the CDI names of `devns cdi generate`'s
//! spec, which the runtime turns into devns's hook. The decisions are
//! `devns_core::deviceplugin`'s.

use anyhow::{Context, Result, anyhow};
use devns_core::api::DeviceRow;
use devns_core::deviceplugin::{Class, Offered, cdi_names, offered};
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
        Ok(Response::new(api::DevicePluginOptions::default()))
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
        _: Request<api::PreferredAllocationRequest>,
    ) -> Result<Response<api::PreferredAllocationResponse>, Status> {
        Err(Status::unimplemented("devns has no preferred allocation (GetPreferredAllocationAvailable is false)"))
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
    let mut servers = Vec::new();
    for (index, class) in opts.classes.iter().enumerate() {
        let path = opts.dir.join(class.socket_name());
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed a stale plugin socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
        let listener =
            tokio::net::UnixListener::bind(&path).with_context(|| format!("cannot bind {}", path.display()))?;
        let plugin = Plugin { index, class: class.clone(), kind: opts.kind.clone(), lists: rx.clone() };
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        servers.push(tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DevicePluginServer::new(plugin))
                .serve_with_incoming(incoming),
        ));
        // Registered once it serves: the kubelet calls it back at once.
        let kubelet = opts.dir.join("kubelet.sock");
        let ch = channel(kubelet.clone()).await.with_context(|| format!("the kubelet at {}", kubelet.display()))?;
        let req = api::RegisterRequest {
            version: VERSION.into(),
            endpoint: class.socket_name(),
            resource_name: class.resource.clone(),
            options: Some(api::DevicePluginOptions::default()),
        };
        api::registration_client::RegistrationClient::new(ch)
            .register(req)
            .await
            .map_err(|s| anyhow!("the kubelet refused {}: {}", class.resource, s.message()))?;
        tracing::info!(resource = %class.resource, socket = %path.display(), "registered with the kubelet");
    }
    for s in servers {
        s.await.context("a plugin server")?.context("a plugin server")?;
    }
    Ok(0)
}
