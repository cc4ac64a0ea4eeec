//! Storage pools and volumes: typed handles named after libvirt's API (`virStoragePool*`,
//! `virStorageVol*`), on a [`Connect`], including volume upload and download over the
//! streaming RPCs, sparse-aware (holes travel as lengths, not zeros).

use std::io::SeekFrom;

use rvirt_proto::v1::storage_pool_service_client::StoragePoolServiceClient;
use rvirt_proto::v1::storage_vol_service_client::StorageVolServiceClient;
use rvirt_proto::v1::*;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncSeek, AsyncSeekExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_stream::StreamExt as _;

use crate::connect::{Connect, GrpcTransport};
use crate::error::{Error, Result};

const POOL_SERVICE: &str = "rvirt.v1.StoragePoolService";
const VOL_SERVICE: &str = "rvirt.v1.StorageVolService";

/// Largest data payload of one upload message (the proto allows 1 MiB).
const UPLOAD_CHUNK: usize = 1 << 20;

/// A storage pool as seen when it was looked up (libvirt's `virStoragePoolPtr`).
#[derive(Debug, Clone)]
pub struct StoragePool {
    conn: Connect,
    summary: rvirt_proto::v1::StoragePool,
}

/// A storage volume as seen when it was looked up (libvirt's `virStorageVolPtr`).
#[derive(Debug, Clone)]
pub struct StorageVol {
    conn: Connect,
    summary: rvirt_proto::v1::StorageVol,
}

/// What an upload or download moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes sent or received as data.
    pub data_bytes: u64,
    /// Bytes skipped as holes (sparse streams only).
    pub hole_bytes: u64,
}

impl Transfer {
    /// Data and holes together: how far the transfer got.
    pub fn total(&self) -> u64 {
        self.data_bytes + self.hole_bytes
    }
}

impl Connect {
    fn pool_client(&self) -> Result<StoragePoolServiceClient<GrpcTransport>> {
        Ok(StoragePoolServiceClient::new(self.transport(POOL_SERVICE)?))
    }

    fn vol_client(&self) -> Result<StorageVolServiceClient<GrpcTransport>> {
        Ok(StorageVolServiceClient::new(self.transport(VOL_SERVICE)?))
    }

    fn pool_handle(&self, summary: Option<rvirt_proto::v1::StoragePool>) -> StoragePool {
        StoragePool {
            conn: self.clone(),
            summary: summary.unwrap_or_default(),
        }
    }

    fn vol_handle(&self, summary: Option<rvirt_proto::v1::StorageVol>) -> StorageVol {
        StorageVol {
            conn: self.clone(),
            summary: summary.unwrap_or_default(),
        }
    }

    async fn lookup_storage_pool(&self, key: lookup_storage_pool_request::Key) -> Result<StoragePool> {
        let reply = self
            .pool_client()?
            .lookup_storage_pool(LookupStoragePoolRequest { key: Some(key) })
            .await?;
        Ok(self.pool_handle(reply.into_inner().pool))
    }

    /// `virStoragePoolLookupByName`.
    pub async fn lookup_storage_pool_by_name(&self, name: &str) -> Result<StoragePool> {
        self.lookup_storage_pool(lookup_storage_pool_request::Key::Pool(StoragePoolRef {
            key: Some(storage_pool_ref::Key::Name(name.to_owned())),
        }))
        .await
    }

    /// `virStoragePoolLookupByUUIDString`.
    pub async fn lookup_storage_pool_by_uuid(&self, uuid: &str) -> Result<StoragePool> {
        self.lookup_storage_pool(lookup_storage_pool_request::Key::Pool(StoragePoolRef {
            key: Some(storage_pool_ref::Key::Uuid(uuid.to_owned())),
        }))
        .await
    }

    /// `virStoragePoolLookupByTargetPath`.
    pub async fn lookup_storage_pool_by_target_path(&self, path: &str) -> Result<StoragePool> {
        self.lookup_storage_pool(lookup_storage_pool_request::Key::TargetPath(path.to_owned()))
            .await
    }

    /// `virConnectListAllStoragePools`: `flags` are `StoragePoolListFlag` bits.
    pub async fn list_all_storage_pools(&self, flags: u32) -> Result<Vec<StoragePool>> {
        let reply = self
            .pool_client()?
            .list_storage_pools(ListStoragePoolsRequest { flags })
            .await?;
        Ok(reply
            .into_inner()
            .pools
            .into_iter()
            .map(|p| self.pool_handle(Some(p)))
            .collect())
    }

    /// `virStoragePoolDefineXML`: `flags` are `StoragePoolDefineFlag` bits.
    pub async fn define_storage_pool_xml(&self, xml: &str, flags: u32) -> Result<StoragePool> {
        let reply = self
            .pool_client()?
            .define_storage_pool_xml(DefineStoragePoolXmlRequest {
                xml: xml.into(),
                flags,
            })
            .await?;
        Ok(self.pool_handle(reply.into_inner().pool))
    }

    /// `virStoragePoolCreateXML`: a transient pool, started; `flags` are
    /// `StoragePoolCreateFlag` bits.
    pub async fn create_storage_pool_xml(&self, xml: &str, flags: u32) -> Result<StoragePool> {
        let reply = self
            .pool_client()?
            .create_storage_pool_xml(CreateStoragePoolXmlRequest {
                xml: xml.into(),
                flags,
            })
            .await?;
        Ok(self.pool_handle(reply.into_inner().pool))
    }

    async fn lookup_volume(&self, key: storage_vol_ref::Key) -> Result<StorageVol> {
        let reply = self
            .vol_client()?
            .lookup_storage_vol(LookupStorageVolRequest {
                vol: Some(StorageVolRef { key: Some(key) }),
            })
            .await?;
        Ok(self.vol_handle(reply.into_inner().vol))
    }

    /// `virStorageVolLookupByKey`.
    pub async fn lookup_volume_by_key(&self, key: &str) -> Result<StorageVol> {
        self.lookup_volume(storage_vol_ref::Key::VolumeKey(key.to_owned()))
            .await
    }

    /// `virStorageVolLookupByPath`.
    pub async fn lookup_volume_by_path(&self, path: &str) -> Result<StorageVol> {
        self.lookup_volume(storage_vol_ref::Key::Path(path.to_owned()))
            .await
    }
}

impl StoragePool {
    fn reference(&self) -> Option<StoragePoolRef> {
        Some(StoragePoolRef {
            key: Some(storage_pool_ref::Key::Uuid(self.summary.uuid.clone())),
        })
    }

    fn client(&self) -> Result<StoragePoolServiceClient<GrpcTransport>> {
        self.conn.pool_client()
    }

    /// `virStoragePoolGetName`.
    pub fn name(&self) -> &str {
        &self.summary.name
    }

    /// `virStoragePoolGetUUIDString`.
    pub fn uuid(&self) -> &str {
        &self.summary.uuid
    }

    /// The summary returned by the last call (type, state, active, persistent, autostart).
    pub fn summary(&self) -> &rvirt_proto::v1::StoragePool {
        &self.summary
    }

    /// Re-reads the summary.
    pub async fn refresh_summary(&mut self) -> Result<()> {
        let reply = self
            .client()?
            .lookup_storage_pool(LookupStoragePoolRequest {
                key: self.reference().map(lookup_storage_pool_request::Key::Pool),
            })
            .await?;
        if let Some(pool) = reply.into_inner().pool {
            self.summary = pool;
        }
        Ok(())
    }

    /// `virStoragePoolBuild`: `flags` are `StoragePoolBuildFlag` bits.
    pub async fn build(&self, flags: u32) -> Result<()> {
        self.client()?
            .build_storage_pool(BuildStoragePoolRequest {
                pool: self.reference(),
                flags,
            })
            .await?;
        Ok(())
    }

    /// `virStoragePoolCreate`: starts a defined pool; `flags` are `StoragePoolCreateFlag` bits.
    pub async fn create(&mut self, flags: u32) -> Result<()> {
        let reply = self
            .client()?
            .start_storage_pool(StartStoragePoolRequest {
                pool: self.reference(),
                flags,
            })
            .await?;
        if let Some(pool) = reply.into_inner().pool {
            self.summary = pool;
        }
        Ok(())
    }

    /// `virStoragePoolDestroy`: stops the pool; a transient one disappears.
    pub async fn destroy(&self) -> Result<()> {
        self.client()?
            .destroy_storage_pool(DestroyStoragePoolRequest {
                pool: self.reference(),
            })
            .await?;
        Ok(())
    }

    /// `virStoragePoolDelete`: deletes the pool's storage; `flags` are `StoragePoolDeleteFlag`
    /// bits.
    pub async fn delete(&self, flags: u32) -> Result<()> {
        self.client()?
            .delete_storage_pool(DeleteStoragePoolRequest {
                pool: self.reference(),
                flags,
            })
            .await?;
        Ok(())
    }

    /// `virStoragePoolRefresh`.
    pub async fn refresh(&self) -> Result<()> {
        self.client()?
            .refresh_storage_pool(RefreshStoragePoolRequest {
                pool: self.reference(),
            })
            .await?;
        Ok(())
    }

    /// `virStoragePoolGetInfo`.
    pub async fn info(&self) -> Result<GetStoragePoolInfoResponse> {
        Ok(self
            .client()?
            .get_storage_pool_info(GetStoragePoolInfoRequest {
                pool: self.reference(),
            })
            .await?
            .into_inner())
    }

    /// `virStoragePoolGetXMLDesc`: `flags` are `StoragePoolXmlFlag` bits.
    pub async fn xml_desc(&self, flags: u32) -> Result<String> {
        let reply = self
            .client()?
            .get_storage_pool_xml(GetStoragePoolXmlRequest {
                pool: self.reference(),
                flags,
            })
            .await?;
        Ok(reply.into_inner().xml)
    }

    /// `virStoragePoolGetAutostart`.
    pub async fn autostart(&self) -> Result<bool> {
        let reply = self
            .client()?
            .get_storage_pool_autostart(GetStoragePoolAutostartRequest {
                pool: self.reference(),
            })
            .await?;
        Ok(reply.into_inner().autostart)
    }

    /// `virStoragePoolSetAutostart`.
    pub async fn set_autostart(&self, autostart: bool) -> Result<()> {
        self.client()?
            .set_storage_pool_autostart(SetStoragePoolAutostartRequest {
                pool: self.reference(),
                autostart,
            })
            .await?;
        Ok(())
    }

    /// `virStoragePoolUndefine`.
    pub async fn undefine(&self) -> Result<()> {
        self.client()?
            .undefine_storage_pool(UndefineStoragePoolRequest {
                pool: self.reference(),
            })
            .await?;
        Ok(())
    }

    /// `virStoragePoolListAllVolumes`.
    pub async fn list_all_volumes(&self) -> Result<Vec<StorageVol>> {
        let reply = self
            .conn
            .vol_client()?
            .list_storage_vols(ListStorageVolsRequest {
                pool: self.reference(),
            })
            .await?;
        Ok(reply
            .into_inner()
            .vols
            .into_iter()
            .map(|v| self.conn.vol_handle(Some(v)))
            .collect())
    }

    /// `virStorageVolLookupByName`.
    pub async fn lookup_volume_by_name(&self, name: &str) -> Result<StorageVol> {
        self.conn
            .lookup_volume(storage_vol_ref::Key::PoolAndName(StorageVolByName {
                pool: self.reference(),
                name: name.to_owned(),
            }))
            .await
    }

    /// `virStorageVolCreateXML`: `flags` are `StorageVolCreateFlag` bits.
    pub async fn create_volume_xml(&self, xml: &str, flags: u32) -> Result<StorageVol> {
        let reply = self
            .conn
            .vol_client()?
            .create_storage_vol_xml(CreateStorageVolXmlRequest {
                pool: self.reference(),
                xml: xml.into(),
                flags,
            })
            .await?;
        Ok(self.conn.vol_handle(reply.into_inner().vol))
    }

    /// `virStorageVolCreateXMLFrom`: a new volume filled with a copy of `source`.
    pub async fn create_volume_xml_from(
        &self,
        xml: &str,
        source: &StorageVol,
        flags: u32,
    ) -> Result<StorageVol> {
        let reply = self
            .conn
            .vol_client()?
            .create_storage_vol_xml_from(CreateStorageVolXmlFromRequest {
                pool: self.reference(),
                xml: xml.into(),
                source: source.reference(),
                flags,
            })
            .await?;
        Ok(self.conn.vol_handle(reply.into_inner().vol))
    }
}

impl StorageVol {
    fn reference(&self) -> Option<StorageVolRef> {
        let key = match &self.summary.pool {
            Some(pool) if !pool.name.is_empty() => storage_vol_ref::Key::PoolAndName(StorageVolByName {
                pool: Some(StoragePoolRef {
                    key: Some(storage_pool_ref::Key::Name(pool.name.clone())),
                }),
                name: self.summary.name.clone(),
            }),
            _ => storage_vol_ref::Key::VolumeKey(self.summary.key.clone()),
        };
        Some(StorageVolRef { key: Some(key) })
    }

    fn client(&self) -> Result<StorageVolServiceClient<GrpcTransport>> {
        self.conn.vol_client()
    }

    /// `virStorageVolGetName`.
    pub fn name(&self) -> &str {
        &self.summary.name
    }

    /// `virStorageVolGetKey`.
    pub fn key(&self) -> &str {
        &self.summary.key
    }

    /// The name of the pool that holds it (`virStoragePoolLookupByVolume` without a call).
    pub fn pool_name(&self) -> &str {
        self.summary.pool.as_ref().map_or("", |p| p.name.as_str())
    }

    /// The summary returned by the lookup (name, key, path, pool, type).
    pub fn summary(&self) -> &rvirt_proto::v1::StorageVol {
        &self.summary
    }

    /// `virStorageVolGetPath`.
    pub async fn path(&self) -> Result<String> {
        let reply = self
            .client()?
            .get_storage_vol_path(GetStorageVolPathRequest {
                vol: self.reference(),
            })
            .await?;
        Ok(reply.into_inner().path)
    }

    /// `virStorageVolGetInfo`.
    pub async fn info(&self) -> Result<GetStorageVolInfoResponse> {
        Ok(self
            .client()?
            .get_storage_vol_info(GetStorageVolInfoRequest {
                vol: self.reference(),
            })
            .await?
            .into_inner())
    }

    /// `virStorageVolGetXMLDesc`.
    pub async fn xml_desc(&self) -> Result<String> {
        let reply = self
            .client()?
            .get_storage_vol_xml(GetStorageVolXmlRequest {
                vol: self.reference(),
            })
            .await?;
        Ok(reply.into_inner().xml)
    }

    /// `virStorageVolDelete`: `flags` are `StorageVolDeleteFlag` bits.
    pub async fn delete(&self, flags: u32) -> Result<()> {
        self.client()?
            .delete_storage_vol(DeleteStorageVolRequest {
                vol: self.reference(),
                flags,
            })
            .await?;
        Ok(())
    }

    /// `virStorageVolWipePattern` (`virStorageVolWipe` is `StorageVolWipeAlgorithm::Zero`).
    pub async fn wipe(&self, algorithm: StorageVolWipeAlgorithm) -> Result<()> {
        self.client()?
            .wipe_storage_vol(WipeStorageVolRequest {
                vol: self.reference(),
                algorithm: algorithm as i32,
                flags: 0,
            })
            .await?;
        Ok(())
    }

    /// `virStorageVolResize`: `flags` are `StorageVolResizeFlag` bits.
    pub async fn resize(&self, capacity_bytes: u64, flags: u32) -> Result<()> {
        self.client()?
            .resize_storage_vol(ResizeStorageVolRequest {
                vol: self.reference(),
                capacity_bytes,
                flags,
            })
            .await?;
        Ok(())
    }

    /// `virStorageVolUpload`: writes what `reader` yields into the volume from `offset`, at most
    /// `length` bytes (0: until `reader` ends). With `StorageVolUploadFlag::SparseStream` in
    /// `flags`, runs of zeros travel as holes. `progress` gets the bytes consumed so far after
    /// each message. If the call fails midway the volume keeps what was written.
    pub async fn upload<R>(
        &self,
        offset: u64,
        length: u64,
        flags: u32,
        mut reader: R,
        mut progress: impl FnMut(u64),
    ) -> Result<Transfer>
    where
        R: AsyncRead + Unpin,
    {
        let sparse = flags & StorageVolUploadFlag::SparseStream as u32 != 0;
        let (tx, rx) = tokio::sync::mpsc::channel::<UploadStorageVolRequest>(4);
        let mut client = self.client()?;
        let start = upload_storage_vol_request::Message::Start(StorageVolUploadStart {
            vol: self.reference(),
            offset,
            length,
            flags,
        });
        let call = client.upload_storage_vol(tokio_stream::wrappers::ReceiverStream::new(rx));
        let feed = async move {
            let send = |message| {
                let tx = tx.clone();
                async move {
                    tx.send(UploadStorageVolRequest {
                        message: Some(message),
                    })
                    .await
                    .is_ok()
                }
            };
            if !send(start).await {
                return Ok(());
            }
            let mut done = 0u64;
            let mut hole = 0u64;
            let mut buf = vec![0u8; UPLOAD_CHUNK];
            loop {
                let want = if length == 0 {
                    UPLOAD_CHUNK
                } else {
                    usize::try_from((length - done).min(UPLOAD_CHUNK as u64)).unwrap_or(UPLOAD_CHUNK)
                };
                if want == 0 {
                    break;
                }
                let n = read_full(&mut reader, &mut buf[..want]).await.map_err(|e| {
                    Error::new(
                        ErrorCode::ReadFailed,
                        ErrorDomain::Storage,
                        format!("Cannot read the data to upload: {e}"),
                    )
                })?;
                if n == 0 {
                    break;
                }
                let chunk = &buf[..n];
                if sparse && chunk.iter().all(|b| *b == 0) {
                    hole += n as u64;
                } else {
                    if hole > 0 {
                        let message =
                            upload_storage_vol_request::Message::Hole(StorageVolHole { length: hole });
                        if !send(message).await {
                            return Ok(());
                        }
                        hole = 0;
                    }
                    if !send(upload_storage_vol_request::Message::Data(chunk.to_vec())).await {
                        return Ok(());
                    }
                }
                done += n as u64;
                progress(done);
                if n < want {
                    break;
                }
            }
            if hole > 0 {
                send(upload_storage_vol_request::Message::Hole(StorageVolHole {
                    length: hole,
                }))
                .await;
            }
            Ok::<(), Error>(())
        };
        tokio::pin!(call);
        tokio::pin!(feed);
        let mut fed = false;
        loop {
            tokio::select! {
                reply = &mut call => {
                    let reply = reply?.into_inner();
                    return Ok(Transfer { data_bytes: reply.data_bytes, hole_bytes: reply.hole_bytes });
                }
                result = &mut feed, if !fed => {
                    // A failed read abandons the call: the daemon never sees a clean end.
                    result?;
                    fed = true;
                }
            }
        }
    }

    /// `virStorageVolDownload`: writes the volume's data from `offset` (at most `length` bytes,
    /// 0: to the end) to `writer`, which starts at the position for `offset`. With
    /// `StorageVolDownloadFlag::SparseStream` in `flags`, holes move the writer's position
    /// instead of writing zeros; a hole at the very end writes nothing, so a file's length must
    /// then be set by the caller (`File::set_len(start + transfer.total())`). `progress` gets
    /// (bytes done, bytes total) after each piece.
    pub async fn download<W>(
        &self,
        offset: u64,
        length: u64,
        flags: u32,
        writer: &mut W,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Transfer>
    where
        W: AsyncWrite + AsyncSeek + Unpin,
    {
        let write_failed = |e: std::io::Error| {
            Error::new(
                ErrorCode::WriteFailed,
                ErrorDomain::Storage,
                format!("Cannot write the downloaded data: {e}"),
            )
        };
        let mut stream = self
            .client()?
            .download_storage_vol(DownloadStorageVolRequest {
                vol: self.reference(),
                offset,
                length,
                flags,
            })
            .await?
            .into_inner();
        let mut transfer = Transfer::default();
        while let Some(piece) = stream.next().await {
            let piece = piece?;
            match piece.chunk {
                Some(download_storage_vol_response::Chunk::Data(data)) => {
                    writer.write_all(&data).await.map_err(write_failed)?;
                    transfer.data_bytes += data.len() as u64;
                }
                Some(download_storage_vol_response::Chunk::HoleLength(len)) => {
                    let step = i64::try_from(len).map_err(|_| {
                        Error::new(
                            ErrorCode::InternalError,
                            ErrorDomain::Storage,
                            format!("The daemon sent a hole of {len} bytes, more than a file can skip"),
                        )
                    })?;
                    writer.seek(SeekFrom::Current(step)).await.map_err(write_failed)?;
                    transfer.hole_bytes += len;
                }
                None => {}
            }
            progress(piece.bytes_done, piece.bytes_total);
        }
        writer.flush().await.map_err(write_failed)?;
        Ok(transfer)
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

fn split_pool_event(
    response: WatchStoragePoolEventsResponse,
) -> Option<crate::watch::WatchMessage<StoragePoolEvent>> {
    use crate::watch::WatchMessage;
    use watch_storage_pool_events_response::Message;
    match response.message? {
        Message::Event(event) => Some(WatchMessage::Event {
            epoch: event.epoch.clone(),
            sequence: event.sequence,
            event,
        }),
        Message::ResyncRequired(r) => Some(WatchMessage::Resync(r)),
        Message::CaughtUp(c) => Some(WatchMessage::CaughtUp(c)),
    }
}

impl Connect {
    /// Storage pool events (`virConnectStoragePoolEventRegisterAny`), resumable like
    /// [`Connect::domain_events`].
    pub async fn storage_pool_events(
        &self,
        filter: WatchStoragePoolEventsRequest,
    ) -> Result<crate::watch::Subscription<StoragePoolEvent>> {
        let transport = self.transport(POOL_SERVICE)?;
        let open: crate::watch::Opener<WatchStoragePoolEventsResponse> = Box::new(move |epoch, sequence| {
            let mut client = StoragePoolServiceClient::new(transport.clone());
            let request = WatchStoragePoolEventsRequest {
                since_epoch: epoch,
                since_sequence: sequence,
                ..filter.clone()
            };
            Box::pin(async move {
                let stream = client.watch_storage_pool_events(request).await?.into_inner();
                Ok(Box::pin(stream) as crate::watch::RawStream<WatchStoragePoolEventsResponse>)
            })
        });
        crate::watch::subscribe(open, split_pool_event, None).await
    }
}
