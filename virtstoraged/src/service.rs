//! The gRPC adapters: `StoragePoolService` and `StorageVolService` decode requests, call the
//! [`StorageDriver`] and encode its answers. No storage logic lives here.

use std::sync::Arc;

use rvirt_daemon::events::Delivery;
use rvirt_proto::v1::storage_pool_service_server::StoragePoolService;
use rvirt_proto::v1::storage_vol_service_server::StorageVolService;
use rvirt_proto::v1::*;
use tokio_stream::StreamExt as _;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::driver::{PoolEvent, PoolEventKind, PoolKey, PoolSummary, StorageDriver, VolKey, VolSummary};
use crate::error::StorageError;
use crate::stream::{self, UploadPiece};

type Reply<T> = Result<Response<T>, Status>;

fn pool_key(r: Option<StoragePoolRef>) -> Result<PoolKey, StorageError> {
    match r.and_then(|r| r.key) {
        Some(storage_pool_ref::Key::Name(n)) => Ok(PoolKey::Name(n)),
        Some(storage_pool_ref::Key::Uuid(u)) => Ok(PoolKey::Uuid(u)),
        None => Err(StorageError::invalid_arg(
            "No storage pool named: set the pool's name or UUID",
        )),
    }
}

fn vol_key(r: Option<StorageVolRef>) -> Result<VolKey, StorageError> {
    match r.and_then(|r| r.key) {
        Some(storage_vol_ref::Key::PoolAndName(by)) => Ok(VolKey::Name(pool_key(by.pool)?, by.name)),
        Some(storage_vol_ref::Key::VolumeKey(k)) => Ok(VolKey::Key(k)),
        Some(storage_vol_ref::Key::Path(p)) => Ok(VolKey::Path(p)),
        None => Err(StorageError::invalid_arg(
            "No storage volume named: set pool and name, key, or path",
        )),
    }
}

fn pool_msg(s: PoolSummary) -> StoragePool {
    StoragePool {
        name: s.name.clone(),
        uuid: s.uuid.clone(),
        active: s.active,
        persistent: s.persistent,
        autostart: s.autostart,
        r#type: s.pool_type.as_str().to_owned(),
        state: s.state() as i32,
    }
}

fn vol_msg(s: VolSummary) -> StorageVol {
    StorageVol {
        name: s.name,
        key: s.key,
        path: s.path,
        pool: Some(StoragePoolIdentity {
            name: s.pool.0,
            uuid: s.pool.1,
        }),
        r#type: s.vol_type as i32,
    }
}

/// `StoragePoolService` over the driver.
#[derive(Debug, Clone)]
pub struct PoolService {
    driver: Arc<StorageDriver>,
}

impl PoolService {
    /// The service of `driver`.
    pub fn new(driver: Arc<StorageDriver>) -> Self {
        PoolService { driver }
    }
}

fn event_msg(seq: &rvirt_daemon::events::Sequenced<PoolEvent>, epoch: &str) -> StoragePoolEvent {
    StoragePoolEvent {
        sequence: seq.sequence,
        epoch: epoch.to_owned(),
        time: Some(prost_types::Timestamp::from(seq.time)),
        pool: Some(StoragePoolIdentity {
            name: seq.event.name.clone(),
            uuid: seq.event.uuid.clone(),
        }),
        event: Some(match seq.event.kind {
            PoolEventKind::Lifecycle(t) => storage_pool_event::Event::Lifecycle(StoragePoolLifecycleEvent {
                r#type: t as i32,
                detail: 0,
            }),
            PoolEventKind::Refresh => storage_pool_event::Event::Refresh(StoragePoolRefreshEvent {}),
        }),
    }
}

#[tonic::async_trait]
impl StoragePoolService for PoolService {
    async fn define_storage_pool_xml(
        &self,
        r: Request<DefineStoragePoolXmlRequest>,
    ) -> Reply<DefineStoragePoolXmlResponse> {
        let r = r.into_inner();
        let pool = self.driver.define(&r.xml, r.flags).await?;
        Ok(Response::new(DefineStoragePoolXmlResponse {
            pool: Some(pool_msg(pool)),
        }))
    }

    async fn undefine_storage_pool(
        &self,
        r: Request<UndefineStoragePoolRequest>,
    ) -> Reply<UndefineStoragePoolResponse> {
        self.driver.undefine(&pool_key(r.into_inner().pool)?).await?;
        Ok(Response::new(UndefineStoragePoolResponse {}))
    }

    async fn create_storage_pool_xml(
        &self,
        r: Request<CreateStoragePoolXmlRequest>,
    ) -> Reply<CreateStoragePoolXmlResponse> {
        let r = r.into_inner();
        let pool = self.driver.create(&r.xml, r.flags).await?;
        Ok(Response::new(CreateStoragePoolXmlResponse {
            pool: Some(pool_msg(pool)),
        }))
    }

    async fn build_storage_pool(
        &self,
        r: Request<BuildStoragePoolRequest>,
    ) -> Reply<BuildStoragePoolResponse> {
        let r = r.into_inner();
        self.driver.build(&pool_key(r.pool)?, r.flags).await?;
        Ok(Response::new(BuildStoragePoolResponse {}))
    }

    async fn start_storage_pool(
        &self,
        r: Request<StartStoragePoolRequest>,
    ) -> Reply<StartStoragePoolResponse> {
        let r = r.into_inner();
        let pool = self.driver.start(&pool_key(r.pool)?, r.flags).await?;
        Ok(Response::new(StartStoragePoolResponse {
            pool: Some(pool_msg(pool)),
        }))
    }

    async fn destroy_storage_pool(
        &self,
        r: Request<DestroyStoragePoolRequest>,
    ) -> Reply<DestroyStoragePoolResponse> {
        self.driver.destroy(&pool_key(r.into_inner().pool)?).await?;
        Ok(Response::new(DestroyStoragePoolResponse {}))
    }

    async fn delete_storage_pool(
        &self,
        r: Request<DeleteStoragePoolRequest>,
    ) -> Reply<DeleteStoragePoolResponse> {
        let r = r.into_inner();
        self.driver.delete(&pool_key(r.pool)?, r.flags).await?;
        Ok(Response::new(DeleteStoragePoolResponse {}))
    }

    async fn refresh_storage_pool(
        &self,
        r: Request<RefreshStoragePoolRequest>,
    ) -> Reply<RefreshStoragePoolResponse> {
        self.driver.refresh(&pool_key(r.into_inner().pool)?).await?;
        Ok(Response::new(RefreshStoragePoolResponse {}))
    }

    async fn get_storage_pool_info(
        &self,
        r: Request<GetStoragePoolInfoRequest>,
    ) -> Reply<GetStoragePoolInfoResponse> {
        let (state, capacity, allocation, available) = self.driver.info(&pool_key(r.into_inner().pool)?)?;
        Ok(Response::new(GetStoragePoolInfoResponse {
            state: state as i32,
            capacity_bytes: capacity,
            allocation_bytes: allocation,
            available_bytes: available,
        }))
    }

    async fn get_storage_pool_xml(
        &self,
        r: Request<GetStoragePoolXmlRequest>,
    ) -> Reply<GetStoragePoolXmlResponse> {
        let r = r.into_inner();
        if r.flags & !1 != 0 {
            return Err(StorageError::invalid_arg(format!("Unsupported flags {:#x}", r.flags & !1)).into());
        }
        let xml = self.driver.xml(&pool_key(r.pool)?, r.flags & 1 != 0)?;
        Ok(Response::new(GetStoragePoolXmlResponse { xml }))
    }

    async fn get_storage_pool_autostart(
        &self,
        r: Request<GetStoragePoolAutostartRequest>,
    ) -> Reply<GetStoragePoolAutostartResponse> {
        let autostart = self.driver.autostart(&pool_key(r.into_inner().pool)?)?;
        Ok(Response::new(GetStoragePoolAutostartResponse { autostart }))
    }

    async fn set_storage_pool_autostart(
        &self,
        r: Request<SetStoragePoolAutostartRequest>,
    ) -> Reply<SetStoragePoolAutostartResponse> {
        let r = r.into_inner();
        self.driver.set_autostart(&pool_key(r.pool)?, r.autostart).await?;
        Ok(Response::new(SetStoragePoolAutostartResponse {}))
    }

    async fn lookup_storage_pool(
        &self,
        r: Request<LookupStoragePoolRequest>,
    ) -> Reply<LookupStoragePoolResponse> {
        let pool = match r.into_inner().key {
            Some(lookup_storage_pool_request::Key::Pool(p)) => self.driver.lookup(&pool_key(Some(p))?)?,
            Some(lookup_storage_pool_request::Key::Volume(v)) => {
                self.driver.lookup_by_vol(&vol_key(Some(v))?)?
            }
            Some(lookup_storage_pool_request::Key::TargetPath(p)) => self.driver.lookup_by_target(&p)?,
            None => {
                return Err(
                    StorageError::invalid_arg("No lookup key: set pool, volume or target_path").into(),
                );
            }
        };
        Ok(Response::new(LookupStoragePoolResponse {
            pool: Some(pool_msg(pool)),
        }))
    }

    async fn list_storage_pools(
        &self,
        r: Request<ListStoragePoolsRequest>,
    ) -> Reply<ListStoragePoolsResponse> {
        let pools = self
            .driver
            .list(r.into_inner().flags)
            .into_iter()
            .map(pool_msg)
            .collect();
        Ok(Response::new(ListStoragePoolsResponse { pools }))
    }

    async fn watch_storage_pool_events(
        &self,
        r: Request<WatchStoragePoolEventsRequest>,
    ) -> Reply<BoxStream<WatchStoragePoolEventsResponse>> {
        let r = r.into_inner();
        let only = match r.pool {
            Some(p) => Some(self.driver.lookup(&pool_key(Some(p))?)?.uuid),
            None => None,
        };
        let ids = r.event_ids.clone();
        let epoch = self.driver.events.epoch().to_owned();
        let gate = rvirt_proto::access::current_gate();
        let stream = self
            .driver
            .events
            .watch(&r.since_epoch, r.since_sequence)
            .filter_map(move |d| {
                let message = match d {
                    Delivery::Event(e) => {
                        if only.as_ref().is_some_and(|u| *u != e.event.uuid) {
                            return None;
                        }
                        let id = match e.event.kind {
                            PoolEventKind::Lifecycle(_) => StoragePoolEventId::Lifecycle,
                            PoolEventKind::Refresh => StoragePoolEventId::Refresh,
                        } as i32;
                        if !ids.is_empty() && !ids.contains(&id) {
                            return None;
                        }
                        // Events of pools the caller may not see are left out, as from lists.
                        if gate
                            .as_ref()
                            .is_some_and(|g| g.check(&[&e.event.name, &e.event.uuid]).is_err())
                        {
                            return None;
                        }
                        watch_storage_pool_events_response::Message::Event(event_msg(&e, &epoch))
                    }
                    Delivery::CaughtUp {
                        epoch,
                        current_sequence,
                    } => watch_storage_pool_events_response::Message::CaughtUp(CaughtUp {
                        epoch,
                        current_sequence,
                    }),
                    Delivery::ResyncRequired {
                        reason,
                        epoch,
                        requested_sequence,
                        oldest_retained_sequence,
                        current_sequence,
                    } => watch_storage_pool_events_response::Message::ResyncRequired(ResyncRequired {
                        reason: ResyncReason::from(reason) as i32,
                        epoch,
                        requested_sequence,
                        oldest_retained_sequence,
                        current_sequence,
                    }),
                };
                Some(Ok(WatchStoragePoolEventsResponse {
                    message: Some(message),
                }))
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// `StorageVolService` over the driver.
#[derive(Debug, Clone)]
pub struct VolService {
    driver: Arc<StorageDriver>,
}

impl VolService {
    /// The service of `driver`.
    pub fn new(driver: Arc<StorageDriver>) -> Self {
        VolService { driver }
    }
}

#[tonic::async_trait]
impl StorageVolService for VolService {
    async fn create_storage_vol_xml(
        &self,
        r: Request<CreateStorageVolXmlRequest>,
    ) -> Reply<CreateStorageVolXmlResponse> {
        let r = r.into_inner();
        let vol = self
            .driver
            .vol_create(&pool_key(r.pool)?, &r.xml, r.flags)
            .await?;
        Ok(Response::new(CreateStorageVolXmlResponse {
            vol: Some(vol_msg(vol)),
        }))
    }

    async fn create_storage_vol_xml_from(
        &self,
        r: Request<CreateStorageVolXmlFromRequest>,
    ) -> Reply<CreateStorageVolXmlFromResponse> {
        let r = r.into_inner();
        let vol = self
            .driver
            .vol_create_from(&pool_key(r.pool)?, &r.xml, &vol_key(r.source)?, r.flags)
            .await?;
        Ok(Response::new(CreateStorageVolXmlFromResponse {
            vol: Some(vol_msg(vol)),
        }))
    }

    async fn delete_storage_vol(
        &self,
        r: Request<DeleteStorageVolRequest>,
    ) -> Reply<DeleteStorageVolResponse> {
        let r = r.into_inner();
        self.driver.vol_delete(&vol_key(r.vol)?, r.flags).await?;
        Ok(Response::new(DeleteStorageVolResponse {}))
    }

    async fn wipe_storage_vol(&self, r: Request<WipeStorageVolRequest>) -> Reply<WipeStorageVolResponse> {
        let r = r.into_inner();
        self.driver
            .vol_wipe(&vol_key(r.vol)?, r.algorithm, r.flags)
            .await?;
        Ok(Response::new(WipeStorageVolResponse {}))
    }

    async fn resize_storage_vol(
        &self,
        r: Request<ResizeStorageVolRequest>,
    ) -> Reply<ResizeStorageVolResponse> {
        let r = r.into_inner();
        self.driver
            .vol_resize(&vol_key(r.vol)?, r.capacity_bytes, r.flags)
            .await?;
        Ok(Response::new(ResizeStorageVolResponse {}))
    }

    async fn get_storage_vol_info(
        &self,
        r: Request<GetStorageVolInfoRequest>,
    ) -> Reply<GetStorageVolInfoResponse> {
        let info = self.driver.vol_info(&vol_key(r.into_inner().vol)?)?;
        Ok(Response::new(GetStorageVolInfoResponse {
            r#type: info.vol_type as i32,
            capacity_bytes: info.capacity,
            allocation_bytes: info.allocation,
            physical_bytes: info.physical,
        }))
    }

    async fn get_storage_vol_xml(
        &self,
        r: Request<GetStorageVolXmlRequest>,
    ) -> Reply<GetStorageVolXmlResponse> {
        let xml = self.driver.vol_xml(&vol_key(r.into_inner().vol)?)?;
        Ok(Response::new(GetStorageVolXmlResponse { xml }))
    }

    async fn get_storage_vol_path(
        &self,
        r: Request<GetStorageVolPathRequest>,
    ) -> Reply<GetStorageVolPathResponse> {
        let vol = self.driver.vol_lookup(&vol_key(r.into_inner().vol)?)?;
        Ok(Response::new(GetStorageVolPathResponse { path: vol.path }))
    }

    async fn lookup_storage_vol(
        &self,
        r: Request<LookupStorageVolRequest>,
    ) -> Reply<LookupStorageVolResponse> {
        let vol = self.driver.vol_lookup(&vol_key(r.into_inner().vol)?)?;
        Ok(Response::new(LookupStorageVolResponse {
            vol: Some(vol_msg(vol)),
        }))
    }

    async fn list_storage_vols(&self, r: Request<ListStorageVolsRequest>) -> Reply<ListStorageVolsResponse> {
        let vols = self
            .driver
            .vol_list(&pool_key(r.into_inner().pool)?)?
            .into_iter()
            .map(vol_msg)
            .collect();
        Ok(Response::new(ListStorageVolsResponse { vols }))
    }

    async fn upload_storage_vol(
        &self,
        r: Request<Streaming<UploadStorageVolRequest>>,
    ) -> Reply<UploadStorageVolResponse> {
        let mut incoming = r.into_inner();
        let start = match incoming.message().await? {
            Some(UploadStorageVolRequest {
                message: Some(upload_storage_vol_request::Message::Start(start)),
            }) => start,
            _ => {
                return Err(StorageError::new(
                    ErrorCode::InvalidStream,
                    "An upload must start with a start message naming the volume",
                )
                .into());
            }
        };
        if start.flags & !1 != 0 {
            return Err(StorageError::invalid_arg(format!(
                "Unsupported upload flags {:#x}",
                start.flags & !1
            ))
            .into());
        }
        let sparse = start.flags & 1 != 0;
        let vol = self.driver.vol_use(&vol_key(start.vol)?)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<UploadPiece>(8);
        let path = vol.path.clone();
        let writer = tokio::task::spawn_blocking(move || {
            stream::upload(&path, start.offset, start.length, sparse, rx)
        });
        let mut failure: Option<Status> = None;
        loop {
            let msg = match incoming.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let piece = match msg.message {
                Some(upload_storage_vol_request::Message::Data(d)) => UploadPiece::Data(d),
                Some(upload_storage_vol_request::Message::Hole(h)) => UploadPiece::Hole(h.length),
                _ => {
                    failure = Some(
                        StorageError::new(
                            ErrorCode::InvalidStream,
                            "Only data and hole messages may follow the start",
                        )
                        .into(),
                    );
                    break;
                }
            };
            if tx.send(piece).await.is_err() {
                break; // the writer stopped: its error is reported below
            }
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| StorageError::internal(format!("Upload writer failed: {e}")))?;
        let (pool, name) = vol.names();
        let (pool, name) = (pool.to_owned(), name.to_owned());
        drop(vol);
        self.driver.vol_reprobe(&pool, &name).await;
        let totals = written?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(Response::new(UploadStorageVolResponse {
            data_bytes: totals.data,
            hole_bytes: totals.holes,
        }))
    }

    async fn download_storage_vol(
        &self,
        r: Request<DownloadStorageVolRequest>,
    ) -> Reply<BoxStream<DownloadStorageVolResponse>> {
        let r = r.into_inner();
        if r.flags & !1 != 0 {
            return Err(
                StorageError::invalid_arg(format!("Unsupported download flags {:#x}", r.flags & !1)).into(),
            );
        }
        let vol = self.driver.vol_use(&vol_key(r.vol)?)?;
        let size = std::fs::metadata(&vol.path)
            .map_err(|e| StorageError::io(format!("Cannot stat {}", vol.path.display()), &e))?
            .len();
        stream::download_range(size, r.offset, r.length)?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let sparse = r.flags & 1 != 0;
        tokio::task::spawn_blocking(move || {
            let err_tx = tx.clone();
            if let Err(e) = stream::download(&vol.path, r.offset, r.length, sparse, tx) {
                let _ = err_tx.blocking_send(Err(e.into()));
            }
            drop(vol);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
