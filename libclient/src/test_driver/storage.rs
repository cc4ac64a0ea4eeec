//! The test driver's storage pool and volume services: libvirt's test-driver rules (every pool
//! holds 100 GiB, volume paths are `<pool path>/<name>`, the key is the path), with volume data
//! held in memory so upload and download (sparse-aware) work end to end.

use std::pin::Pin;
use std::sync::Arc;

use rvirt_proto::error::status;
use rvirt_proto::v1::storage_pool_service_server::StoragePoolService;
use rvirt_proto::v1::storage_vol_service_server::StorageVolService;
use rvirt_proto::v1::*;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use super::node::{
    Objects, POOL_CAPACITY, PoolRecord, TestState, VolumeRecord, XmlNode, bytes_with_unit, canonical_uuid,
    insert_uuid, uuid_v4, xml_error,
};
use crate::events::Delivery;

/// Largest data payload of one download message (proto: at most 1 MiB).
const CHUNK: u64 = 1 << 20;

/// The most data the test driver keeps in memory for one volume; holes cost nothing.
const MAX_DATA: u64 = 256 << 20;

type PoolEventStream =
    Pin<Box<dyn Stream<Item = Result<WatchStoragePoolEventsResponse, Status>> + Send + 'static>>;
type DownloadStream =
    Pin<Box<dyn Stream<Item = Result<DownloadStorageVolResponse, Status>> + Send + 'static>>;

/// Reads the parts of a `<pool>` the test driver keeps: type, name, UUID (filled in when
/// absent) and target path. The one place pool XML is read, to be replaced by `rvirt_conf`'s
/// model.
pub fn parse_pool(xml: &str) -> Result<PoolRecord, Status> {
    let root = XmlNode::parse(xml)?;
    if root.name != "pool" {
        return Err(xml_error(format!(
            "Expected a <pool> element, found <{}>",
            root.name
        )));
    }
    let pool_type = root
        .attr("type")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            xml_error("The <pool> element has no type attribute: add type='dir' (or fs, logical, ...)")
        })?
        .to_owned();
    let name = root
        .text_at(&["name"])
        .filter(|n| !n.is_empty())
        .ok_or_else(|| xml_error("The pool has no <name>: add <name>NAME</name>"))?;
    if name.contains('/') {
        return Err(xml_error(format!("Pool name {name:?} may not contain '/'")));
    }
    let target_path = root.text_at(&["target", "path"]).unwrap_or_default();
    if target_path.is_empty() && matches!(pool_type.as_str(), "dir" | "fs" | "netfs") {
        return Err(xml_error(format!(
            "A pool of type '{pool_type}' needs <target><path>: add the directory that holds its volumes"
        )));
    }
    // The pool XML that travels with volumes in a <node> file is not part of the definition.
    let own_xml = strip_children(xml.trim(), "volume");
    let (uuid, xml) = match root.text_at(&["uuid"]) {
        Some(text) => (
            canonical_uuid(&text)
                .ok_or_else(|| xml_error(format!("The pool <uuid> {text:?} is not a UUID")))?,
            own_xml,
        ),
        None => {
            let uuid = uuid_v4();
            let xml = insert_uuid(&own_xml, &uuid);
            (uuid, xml)
        }
    };
    Ok(PoolRecord {
        name,
        uuid,
        xml,
        active: false,
        persistent: false,
        autostart: false,
        pool_type,
        target_path: target_path.trim_end_matches('/').to_owned(),
        volumes: Default::default(),
    })
}

/// The pool XML without its direct `<child>` elements (volumes listed in a `<node>` file).
fn strip_children(xml: &str, child: &str) -> String {
    let Ok(children) = super::node::top_level_children(xml, "pool") else {
        return xml.to_owned();
    };
    let mut out = xml.to_owned();
    for (name, raw) in children {
        if name == child
            && let Some(pos) = out.find(&raw)
        {
            out.replace_range(pos..pos + raw.len(), "");
        }
    }
    // Drop the blank lines the removal left.
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads the parts of a `<volume>` the test driver keeps: name, capacity, allocation (the
/// capacity when absent) and format; path and key follow from the pool. The one place volume
/// XML is read.
pub fn parse_volume(xml: &str, pool: &PoolRecord) -> Result<VolumeRecord, Status> {
    let root = XmlNode::parse(xml)?;
    if root.name != "volume" {
        return Err(xml_error(format!(
            "Expected a <volume> element, found <{}>",
            root.name
        )));
    }
    let name = root
        .text_at(&["name"])
        .filter(|n| !n.is_empty())
        .ok_or_else(|| xml_error("The volume has no <name>: add <name>NAME</name>"))?;
    if name.contains('/') {
        return Err(xml_error(format!("Volume name {name:?} may not contain '/'")));
    }
    let size = |element: &str| -> Result<Option<u64>, Status> {
        match root.child(element) {
            Some(node) => Ok(Some(bytes_with_unit(&node.text, node.attr("unit"), element)?)),
            None => Ok(None),
        }
    };
    let capacity =
        size("capacity")?.ok_or_else(|| xml_error("The volume has no <capacity>: add its size"))?;
    let allocation = size("allocation")?.unwrap_or(capacity);
    let format = root
        .child("target")
        .and_then(|t| t.child("format"))
        .and_then(|f| f.attr("type"))
        .unwrap_or("raw")
        .to_owned();
    let path = if pool.target_path.is_empty() {
        name.clone()
    } else {
        format!("{}/{}", pool.target_path, name)
    };
    Ok(VolumeRecord {
        key: path.clone(),
        path,
        name,
        capacity,
        allocation,
        format,
        data: Vec::new(),
    })
}

/// libvirt's volume type for a pool type (its test driver's mapping).
fn volume_type(pool_type: &str) -> StorageVolType {
    match pool_type {
        "sheepdog" | "iscsi-direct" | "gluster" | "rbd" => StorageVolType::Network,
        "logical" | "disk" | "mpath" | "iscsi" | "scsi" | "zfs" => StorageVolType::Block,
        _ => StorageVolType::File,
    }
}

/// The volume's XML, as libvirt formats a volume.
pub fn format_volume(volume: &VolumeRecord, pool: &PoolRecord) -> String {
    let kind = match volume_type(&pool.pool_type) {
        StorageVolType::Block => "block",
        StorageVolType::Network => "network",
        _ => "file",
    };
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('\'', "&apos;")
    };
    let format = if kind == "file" {
        format!("    <format type='{}'/>\n", esc(&volume.format))
    } else {
        String::new()
    };
    format!(
        "<volume type='{kind}'>\n  <name>{}</name>\n  <key>{}</key>\n  <capacity unit='bytes'>{}</capacity>\n  <allocation unit='bytes'>{}</allocation>\n  <target>\n    <path>{}</path>\n{format}  </target>\n</volume>\n",
        esc(&volume.name),
        esc(&volume.key),
        volume.capacity,
        volume.allocation,
        esc(&volume.path),
    )
}

fn vol_summary(volume: &VolumeRecord, pool: &PoolRecord) -> StorageVol {
    StorageVol {
        name: volume.name.clone(),
        key: volume.key.clone(),
        path: volume.path.clone(),
        pool: Some(pool.identity()),
        r#type: volume_type(&pool.pool_type) as i32,
    }
}

fn invalid(message: String) -> Status {
    status(ErrorCode::OperationInvalid, ErrorDomain::Test, message)
}

fn bad_arg(message: String) -> Status {
    status(ErrorCode::InvalidArg, ErrorDomain::Test, message)
}

fn no_pool(what: String) -> Status {
    status(
        ErrorCode::NoStoragePool,
        ErrorDomain::Test,
        format!("Storage pool not found: {what}"),
    )
}

fn no_vol(what: String) -> Status {
    status(
        ErrorCode::NoStorageVol,
        ErrorDomain::Test,
        format!("Storage volume not found: {what}"),
    )
}

/// The name (the map key) of the pool a reference names.
/// The pool a reference names, once the access rules that name pools allow the call on it.
fn find_pool(objects: &Objects, pool: Option<&StoragePoolRef>) -> Result<String, Status> {
    let name = find_pool_unchecked(objects, pool)?;
    let uuid = objects.pools.get(&name).map_or("", |p| p.uuid.as_str());
    rvirt_proto::access::authorize(&["storage_pool"], &[&name, uuid])?;
    Ok(name)
}

fn find_pool_unchecked(objects: &Objects, pool: Option<&StoragePoolRef>) -> Result<String, Status> {
    let key = pool
        .and_then(|p| p.key.as_ref())
        .ok_or_else(|| bad_arg("No storage pool given: set the pool's name or UUID".into()))?;
    match key {
        storage_pool_ref::Key::Name(name) => objects
            .pools
            .get(name)
            .map(|p| p.name.clone())
            .ok_or_else(|| no_pool(format!("no storage pool with matching name '{name}'"))),
        storage_pool_ref::Key::Uuid(uuid) => {
            let canonical = canonical_uuid(uuid);
            objects
                .pools
                .values()
                .find(|p| Some(&p.uuid) == canonical.as_ref())
                .map(|p| p.name.clone())
                .ok_or_else(|| no_pool(format!("no storage pool with matching uuid '{uuid}'")))
        }
    }
}

fn pool_mut<'a>(objects: &'a mut Objects, key: &str) -> Result<&'a mut PoolRecord, Status> {
    objects
        .pools
        .get_mut(key)
        .ok_or_else(|| no_pool(format!("no storage pool with matching name '{key}'")))
}

fn active_pool<'a>(objects: &'a mut Objects, key: &str) -> Result<&'a mut PoolRecord, Status> {
    let pool = pool_mut(objects, key)?;
    if !pool.active {
        return Err(invalid(format!(
            "Requested operation is not valid: storage pool '{key}' is not active"
        )));
    }
    Ok(pool)
}

fn inactive_pool<'a>(objects: &'a mut Objects, key: &str) -> Result<&'a mut PoolRecord, Status> {
    let pool = pool_mut(objects, key)?;
    if pool.active {
        return Err(invalid(format!(
            "Requested operation is not valid: storage pool '{key}' is active"
        )));
    }
    Ok(pool)
}

/// The (pool name, volume name) a volume reference names. Key and path lookups search the
/// active pools, as libvirt's do.
fn find_vol(objects: &Objects, vol: Option<&StorageVolRef>) -> Result<(String, String), Status> {
    let (pool, name) = find_vol_unchecked(objects, vol)?;
    if let Some(v) = objects.pools.get(&pool).and_then(|p| p.volumes.get(&name)) {
        rvirt_proto::access::authorize(&["storage_vol"], &[&format!("{pool}/{name}"), &v.key, &v.path])?;
    }
    Ok((pool, name))
}

fn find_vol_unchecked(objects: &Objects, vol: Option<&StorageVolRef>) -> Result<(String, String), Status> {
    let key = vol.and_then(|v| v.key.as_ref()).ok_or_else(|| {
        bad_arg("No storage volume given: set its pool and name, its key or its path".into())
    })?;
    match key {
        storage_vol_ref::Key::PoolAndName(by_name) => {
            let pool_key = find_pool(objects, by_name.pool.as_ref())?;
            let pool = objects
                .pools
                .get(&pool_key)
                .ok_or_else(|| no_pool(format!("no storage pool with matching name '{pool_key}'")))?;
            if !pool.active {
                return Err(invalid(format!(
                    "Requested operation is not valid: storage pool '{pool_key}' is not active"
                )));
            }
            if pool.volumes.contains_key(&by_name.name) {
                Ok((pool_key, by_name.name.clone()))
            } else {
                Err(no_vol(format!(
                    "no storage vol with matching name '{}'",
                    by_name.name
                )))
            }
        }
        storage_vol_ref::Key::VolumeKey(k) => objects
            .pools
            .values()
            .filter(|p| p.active)
            .find_map(|p| {
                p.volumes
                    .values()
                    .find(|v| &v.key == k)
                    .map(|v| (p.name.clone(), v.name.clone()))
            })
            .ok_or_else(|| no_vol(format!("no storage vol with matching key '{k}'"))),
        storage_vol_ref::Key::Path(path) => objects
            .pools
            .values()
            .filter(|p| p.active)
            .find_map(|p| {
                p.volumes
                    .values()
                    .find(|v| &v.path == path)
                    .map(|v| (p.name.clone(), v.name.clone()))
            })
            .ok_or_else(|| no_vol(format!("no storage vol with matching path '{path}'"))),
    }
}

fn vol_mut<'a>(objects: &'a mut Objects, pool: &str, name: &str) -> Result<&'a mut VolumeRecord, Status> {
    active_pool(objects, pool)?
        .volumes
        .get_mut(name)
        .ok_or_else(|| no_vol(format!("no storage vol with matching name '{name}'")))
}

fn matches_list_flags(p: &PoolRecord, flags: u32) -> bool {
    use StoragePoolListFlag as F;
    let has = |f: F| flags & (f as u32) != 0;
    let pair =
        |yes: F, no: F, value: bool| (!has(yes) && !has(no)) || (has(yes) && value) || (has(no) && !value);
    const TYPES: [(StoragePoolListFlag, &str); 14] = [
        (F::Dir, "dir"),
        (F::Fs, "fs"),
        (F::Netfs, "netfs"),
        (F::Logical, "logical"),
        (F::Disk, "disk"),
        (F::Iscsi, "iscsi"),
        (F::Scsi, "scsi"),
        (F::Mpath, "mpath"),
        (F::Rbd, "rbd"),
        (F::Sheepdog, "sheepdog"),
        (F::Gluster, "gluster"),
        (F::Zfs, "zfs"),
        (F::Vstorage, "vstorage"),
        (F::IscsiDirect, "iscsi-direct"),
    ];
    let any_type = TYPES.iter().any(|(f, _)| has(*f));
    let type_ok = !any_type || TYPES.iter().any(|(f, t)| has(*f) && p.pool_type == *t);
    pair(F::Active, F::Inactive, p.active)
        && pair(F::Persistent, F::Transient, p.persistent)
        && pair(F::Autostart, F::NoAutostart, p.autostart)
        && type_ok
}

/// The test driver's storage pool service.
#[derive(Debug)]
pub struct TestPools {
    state: Arc<TestState>,
}

impl TestPools {
    /// The storage pool service of a test driver instance.
    pub fn new(state: Arc<TestState>) -> Self {
        TestPools { state }
    }

    fn emit(&self, pool: &PoolRecord, event: storage_pool_event::Event) {
        self.state.pool_events.emit((pool.identity(), event));
    }

    fn lifecycle(&self, pool: &PoolRecord, kind: StoragePoolEventLifecycleType) {
        self.emit(
            pool,
            storage_pool_event::Event::Lifecycle(StoragePoolLifecycleEvent {
                r#type: kind as i32,
                detail: 0,
            }),
        );
    }
}

#[tonic::async_trait]
impl StoragePoolService for TestPools {
    async fn define_storage_pool_xml(
        &self,
        request: Request<DefineStoragePoolXmlRequest>,
    ) -> Result<Response<DefineStoragePoolXmlResponse>, Status> {
        let parsed = parse_pool(&request.get_ref().xml)?;
        rvirt_proto::access::authorize(&["storage_pool"], &[&parsed.name, &parsed.uuid])?;
        let mut objects = self.state.lock();
        if let Some(other) = objects
            .pools
            .values()
            .find(|p| p.uuid == parsed.uuid && p.name != parsed.name)
        {
            return Err(invalid(format!(
                "Requested operation is not valid: pool '{}' is already defined with uuid {}",
                other.name, other.uuid
            )));
        }
        let pool = match objects.pools.get_mut(&parsed.name) {
            Some(existing) if existing.uuid != parsed.uuid => {
                return Err(invalid(format!(
                    "Requested operation is not valid: pool '{}' already exists with uuid {}",
                    existing.name, existing.uuid
                )));
            }
            Some(existing) => {
                existing.xml = parsed.xml;
                if !existing.active {
                    existing.pool_type = parsed.pool_type;
                    existing.target_path = parsed.target_path;
                }
                existing.persistent = true;
                existing.clone()
            }
            None => {
                let mut record = parsed;
                record.persistent = true;
                objects.pools.insert(record.name.clone(), record.clone());
                record
            }
        };
        drop(objects);
        self.lifecycle(&pool, StoragePoolEventLifecycleType::Defined);
        Ok(Response::new(DefineStoragePoolXmlResponse {
            pool: Some(pool.summary()),
        }))
    }

    async fn undefine_storage_pool(
        &self,
        request: Request<UndefineStoragePoolRequest>,
    ) -> Result<Response<UndefineStoragePoolResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find_pool(&objects, request.get_ref().pool.as_ref())?;
        let pool = inactive_pool(&mut objects, &key)?;
        if !pool.persistent {
            return Err(invalid(format!(
                "Requested operation is not valid: storage pool '{key}' is transient"
            )));
        }
        let pool = pool.clone();
        objects.pools.remove(&key);
        drop(objects);
        self.lifecycle(&pool, StoragePoolEventLifecycleType::Undefined);
        Ok(Response::new(UndefineStoragePoolResponse::default()))
    }

    async fn create_storage_pool_xml(
        &self,
        request: Request<CreateStoragePoolXmlRequest>,
    ) -> Result<Response<CreateStoragePoolXmlResponse>, Status> {
        let request = request.into_inner();
        let mut record = parse_pool(&request.xml)?;
        rvirt_proto::access::authorize(&["storage_pool"], &[&record.name, &record.uuid])?;
        let mut objects = self.state.lock();
        if let Some(existing) = objects
            .pools
            .values()
            .find(|p| p.name == record.name || p.uuid == record.uuid)
        {
            return Err(invalid(format!(
                "Requested operation is not valid: pool '{}' already exists with uuid {}",
                existing.name, existing.uuid
            )));
        }
        record.active = true;
        objects.pools.insert(record.name.clone(), record.clone());
        drop(objects);
        if request.flags
            & (StoragePoolCreateFlag::WithBuild as u32
                | StoragePoolCreateFlag::WithBuildOverwrite as u32
                | StoragePoolCreateFlag::WithBuildNoOverwrite as u32)
            != 0
        {
            self.lifecycle(&record, StoragePoolEventLifecycleType::Created);
        }
        self.lifecycle(&record, StoragePoolEventLifecycleType::Started);
        Ok(Response::new(CreateStoragePoolXmlResponse {
            pool: Some(record.summary()),
        }))
    }

    async fn build_storage_pool(
        &self,
        request: Request<BuildStoragePoolRequest>,
    ) -> Result<Response<BuildStoragePoolResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find_pool(&objects, request.get_ref().pool.as_ref())?;
        let pool = inactive_pool(&mut objects, &key)?.clone();
        drop(objects);
        self.lifecycle(&pool, StoragePoolEventLifecycleType::Created);
        Ok(Response::new(BuildStoragePoolResponse::default()))
    }

    async fn start_storage_pool(
        &self,
        request: Request<StartStoragePoolRequest>,
    ) -> Result<Response<StartStoragePoolResponse>, Status> {
        let request = request.into_inner();
        let mut objects = self.state.lock();
        let key = find_pool(&objects, request.pool.as_ref())?;
        let pool = pool_mut(&mut objects, &key)?;
        if pool.active {
            return Err(invalid(format!(
                "Requested operation is not valid: storage pool '{key}' is already active"
            )));
        }
        pool.active = true;
        let pool = pool.clone();
        drop(objects);
        if request.flags != 0 {
            self.lifecycle(&pool, StoragePoolEventLifecycleType::Created);
        }
        self.lifecycle(&pool, StoragePoolEventLifecycleType::Started);
        Ok(Response::new(StartStoragePoolResponse {
            pool: Some(pool.summary()),
        }))
    }

    async fn destroy_storage_pool(
        &self,
        request: Request<DestroyStoragePoolRequest>,
    ) -> Result<Response<DestroyStoragePoolResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find_pool(&objects, request.get_ref().pool.as_ref())?;
        let pool = active_pool(&mut objects, &key)?;
        pool.active = false;
        let pool = pool.clone();
        if !pool.persistent {
            objects.pools.remove(&key);
        }
        drop(objects);
        self.lifecycle(&pool, StoragePoolEventLifecycleType::Stopped);
        Ok(Response::new(DestroyStoragePoolResponse::default()))
    }

    async fn delete_storage_pool(
        &self,
        request: Request<DeleteStoragePoolRequest>,
    ) -> Result<Response<DeleteStoragePoolResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find_pool(&objects, request.get_ref().pool.as_ref())?;
        let pool = inactive_pool(&mut objects, &key)?;
        // The storage is gone, and the volumes in it.
        pool.volumes.clear();
        let pool = pool.clone();
        drop(objects);
        self.lifecycle(&pool, StoragePoolEventLifecycleType::Deleted);
        Ok(Response::new(DeleteStoragePoolResponse::default()))
    }

    async fn refresh_storage_pool(
        &self,
        request: Request<RefreshStoragePoolRequest>,
    ) -> Result<Response<RefreshStoragePoolResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find_pool(&objects, request.get_ref().pool.as_ref())?;
        let pool = active_pool(&mut objects, &key)?.clone();
        drop(objects);
        self.emit(
            &pool,
            storage_pool_event::Event::Refresh(StoragePoolRefreshEvent {}),
        );
        Ok(Response::new(RefreshStoragePoolResponse::default()))
    }

    async fn get_storage_pool_info(
        &self,
        request: Request<GetStoragePoolInfoRequest>,
    ) -> Result<Response<GetStoragePoolInfoResponse>, Status> {
        let objects = self.state.lock();
        let key = find_pool(&objects, request.get_ref().pool.as_ref())?;
        let pool = objects
            .pools
            .get(&key)
            .ok_or_else(|| no_pool(format!("no storage pool with matching name '{key}'")))?;
        let info = if pool.active {
            let allocation = pool.allocation();
            GetStoragePoolInfoResponse {
                state: StoragePoolState::Running as i32,
                capacity_bytes: POOL_CAPACITY,
                allocation_bytes: allocation,
                available_bytes: POOL_CAPACITY.saturating_sub(allocation),
            }
        } else {
            GetStoragePoolInfoResponse {
                state: StoragePoolState::Inactive as i32,
                ..GetStoragePoolInfoResponse::default()
            }
        };
        Ok(Response::new(info))
    }

    async fn get_storage_pool_xml(
        &self,
        request: Request<GetStoragePoolXmlRequest>,
    ) -> Result<Response<GetStoragePoolXmlResponse>, Status> {
        let objects = self.state.lock();
        let key = find_pool(&objects, request.get_ref().pool.as_ref())?;
        let xml = objects.pools.get(&key).map(|p| p.xml.clone()).unwrap_or_default();
        Ok(Response::new(GetStoragePoolXmlResponse { xml }))
    }

    async fn get_storage_pool_autostart(
        &self,
        request: Request<GetStoragePoolAutostartRequest>,
    ) -> Result<Response<GetStoragePoolAutostartResponse>, Status> {
        let objects = self.state.lock();
        let key = find_pool(&objects, request.get_ref().pool.as_ref())?;
        let autostart = objects.pools.get(&key).is_some_and(|p| p.autostart);
        Ok(Response::new(GetStoragePoolAutostartResponse { autostart }))
    }

    async fn set_storage_pool_autostart(
        &self,
        request: Request<SetStoragePoolAutostartRequest>,
    ) -> Result<Response<SetStoragePoolAutostartResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find_pool(&objects, request.get_ref().pool.as_ref())?;
        let pool = pool_mut(&mut objects, &key)?;
        if !pool.persistent {
            return Err(bad_arg(format!(
                "Invalid argument: pool '{key}' has no config file: autostart needs a persistent pool"
            )));
        }
        pool.autostart = request.get_ref().autostart;
        Ok(Response::new(SetStoragePoolAutostartResponse::default()))
    }

    async fn lookup_storage_pool(
        &self,
        request: Request<LookupStoragePoolRequest>,
    ) -> Result<Response<LookupStoragePoolResponse>, Status> {
        let objects = self.state.lock();
        let key = match request.into_inner().key {
            Some(lookup_storage_pool_request::Key::Pool(pool)) => find_pool(&objects, Some(&pool))?,
            Some(lookup_storage_pool_request::Key::Volume(vol)) => find_vol(&objects, Some(&vol))?.0,
            Some(lookup_storage_pool_request::Key::TargetPath(path)) => {
                let wanted = path.trim_end_matches('/');
                objects
                    .pools
                    .values()
                    .find(|p| p.target_path == wanted)
                    .map(|p| p.name.clone())
                    .ok_or_else(|| no_pool(format!("no storage pool with matching target path '{path}'")))?
            }
            None => {
                return Err(bad_arg(
                    "No storage pool given: set a pool, a volume or a target path".into(),
                ));
            }
        };
        let pool = objects.pools.get(&key).map(PoolRecord::summary);
        Ok(Response::new(LookupStoragePoolResponse { pool }))
    }

    async fn list_storage_pools(
        &self,
        request: Request<ListStoragePoolsRequest>,
    ) -> Result<Response<ListStoragePoolsResponse>, Status> {
        let flags = request.get_ref().flags;
        let objects = self.state.lock();
        let pools = objects
            .pools
            .values()
            .filter(|p| matches_list_flags(p, flags) && rvirt_proto::access::visible(&[&p.name, &p.uuid]))
            .map(PoolRecord::summary)
            .collect();
        Ok(Response::new(ListStoragePoolsResponse { pools }))
    }

    async fn watch_storage_pool_events(
        &self,
        request: Request<WatchStoragePoolEventsRequest>,
    ) -> Result<Response<PoolEventStream>, Status> {
        let request = request.into_inner();
        let wanted = request.event_ids.clone();
        let filter = request.pool.and_then(|p| p.key);
        let events = self
            .state
            .pool_events
            .watch(&request.since_epoch, request.since_sequence);
        let epoch = self.state.pool_events.epoch().to_owned();
        let stream = events.filter_map(move |delivery| {
            let message = match delivery {
                Delivery::Event(e) => {
                    let (who, event) = &e.event;
                    let id = match event {
                        storage_pool_event::Event::Lifecycle(_) => StoragePoolEventId::Lifecycle,
                        storage_pool_event::Event::Refresh(_) => StoragePoolEventId::Refresh,
                    };
                    if !wanted.is_empty() && !wanted.contains(&(id as i32)) {
                        return None;
                    }
                    let matches = match &filter {
                        None => true,
                        Some(storage_pool_ref::Key::Name(n)) => &who.name == n,
                        Some(storage_pool_ref::Key::Uuid(u)) => {
                            canonical_uuid(u).as_deref() == Some(who.uuid.as_str())
                        }
                    };
                    if !matches {
                        return None;
                    }
                    watch_storage_pool_events_response::Message::Event(StoragePoolEvent {
                        sequence: e.sequence,
                        epoch: epoch.clone(),
                        time: Some(prost_types::Timestamp::from(e.time)),
                        pool: Some(who.clone()),
                        event: Some(*event),
                    })
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
                    reason: rvirt_proto::v1::ResyncReason::from(reason) as i32,
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

/// The test driver's storage volume service.
#[derive(Debug)]
pub struct TestVols {
    state: Arc<TestState>,
}

impl TestVols {
    /// The storage volume service of a test driver instance.
    pub fn new(state: Arc<TestState>) -> Self {
        TestVols { state }
    }

    /// Adds a parsed volume to an active pool, checking the name and the space left.
    fn add_volume(
        &self,
        pool_ref: Option<&StoragePoolRef>,
        xml: &str,
        data: impl FnOnce(&Objects) -> Result<Vec<u8>, Status>,
    ) -> Result<StorageVol, Status> {
        let mut objects = self.state.lock();
        let pool_key = find_pool(&objects, pool_ref)?;
        let pool = active_pool(&mut objects, &pool_key)?;
        let mut volume = parse_volume(xml, pool)?;
        rvirt_proto::access::authorize(&["storage_vol"], &[&format!("{pool_key}/{}", volume.name)])?;
        if pool.volumes.contains_key(&volume.name) {
            return Err(status(
                ErrorCode::StorageVolExist,
                ErrorDomain::Test,
                format!(
                    "Storage volume '{}' already exists in pool '{pool_key}'",
                    volume.name
                ),
            ));
        }
        if pool.allocation().saturating_add(volume.allocation) > POOL_CAPACITY {
            return Err(status(
                ErrorCode::InternalError,
                ErrorDomain::Test,
                format!(
                    "Not enough free space in pool '{pool_key}' for volume '{}': free some space or ask for less allocation",
                    volume.name
                ),
            ));
        }
        let mut bytes = data(&objects)?;
        bytes.truncate(usize::try_from(volume.capacity).unwrap_or(usize::MAX));
        volume.data = bytes;
        let pool = active_pool(&mut objects, &pool_key)?;
        let summary = vol_summary(&volume, pool);
        pool.volumes.insert(volume.name.clone(), volume);
        Ok(summary)
    }
}

#[tonic::async_trait]
impl StorageVolService for TestVols {
    async fn create_storage_vol_xml(
        &self,
        request: Request<CreateStorageVolXmlRequest>,
    ) -> Result<Response<CreateStorageVolXmlResponse>, Status> {
        let request = request.into_inner();
        let vol = self.add_volume(request.pool.as_ref(), &request.xml, |_| Ok(Vec::new()))?;
        Ok(Response::new(CreateStorageVolXmlResponse { vol: Some(vol) }))
    }

    async fn create_storage_vol_xml_from(
        &self,
        request: Request<CreateStorageVolXmlFromRequest>,
    ) -> Result<Response<CreateStorageVolXmlFromResponse>, Status> {
        let request = request.into_inner();
        let source = request.source;
        let vol = self.add_volume(request.pool.as_ref(), &request.xml, |objects| {
            let (pool, name) = find_vol(objects, source.as_ref())?;
            Ok(objects
                .pools
                .get(&pool)
                .and_then(|p| p.volumes.get(&name))
                .map(|v| v.data.clone())
                .unwrap_or_default())
        })?;
        Ok(Response::new(CreateStorageVolXmlFromResponse { vol: Some(vol) }))
    }

    async fn delete_storage_vol(
        &self,
        request: Request<DeleteStorageVolRequest>,
    ) -> Result<Response<DeleteStorageVolResponse>, Status> {
        let mut objects = self.state.lock();
        let (pool, name) = find_vol(&objects, request.get_ref().vol.as_ref())?;
        active_pool(&mut objects, &pool)?.volumes.remove(&name);
        Ok(Response::new(DeleteStorageVolResponse::default()))
    }

    async fn wipe_storage_vol(
        &self,
        request: Request<WipeStorageVolRequest>,
    ) -> Result<Response<WipeStorageVolResponse>, Status> {
        let request = request.into_inner();
        if request.flags != 0 {
            return Err(bad_arg(format!(
                "Invalid argument: unsupported flags {:#x} for WipeStorageVol: no flags are defined",
                request.flags
            )));
        }
        if StorageVolWipeAlgorithm::try_from(request.algorithm).is_err() {
            return Err(bad_arg(format!(
                "Invalid argument: unknown wipe algorithm {}: use a StorageVolWipeAlgorithm value",
                request.algorithm
            )));
        }
        let mut objects = self.state.lock();
        let (pool, name) = find_vol(&objects, request.vol.as_ref())?;
        // Whatever the pattern, nothing written before can be read back: the data reads as zeros.
        vol_mut(&mut objects, &pool, &name)?.data.clear();
        Ok(Response::new(WipeStorageVolResponse::default()))
    }

    async fn resize_storage_vol(
        &self,
        request: Request<ResizeStorageVolRequest>,
    ) -> Result<Response<ResizeStorageVolResponse>, Status> {
        let request = request.into_inner();
        let has = |f: StorageVolResizeFlag| request.flags & (f as u32) != 0;
        let mut objects = self.state.lock();
        let (pool_key, name) = find_vol(&objects, request.vol.as_ref())?;
        let pool = active_pool(&mut objects, &pool_key)?;
        let others: u64 = pool
            .volumes
            .values()
            .filter(|v| v.name != name)
            .map(|v| v.allocation)
            .sum();
        let volume = pool
            .volumes
            .get_mut(&name)
            .ok_or_else(|| no_vol(format!("no storage vol with matching name '{name}'")))?;
        let shrink = has(StorageVolResizeFlag::Shrink);
        let capacity = if has(StorageVolResizeFlag::Delta) {
            if shrink {
                volume.capacity.checked_sub(request.capacity_bytes).ok_or_else(|| {
                    bad_arg(format!(
                        "Invalid argument: can't shrink capacity below zero (volume '{name}' has {} bytes)",
                        volume.capacity
                    ))
                })?
            } else {
                volume
                    .capacity
                    .checked_add(request.capacity_bytes)
                    .ok_or_else(|| bad_arg("Invalid argument: the new capacity is too large".into()))?
            }
        } else {
            request.capacity_bytes
        };
        if capacity < volume.capacity && !shrink {
            return Err(bad_arg(format!(
                "Invalid argument: can't shrink capacity below current capacity unless the shrink flag is given (volume '{name}' has {} bytes)",
                volume.capacity
            )));
        }
        if capacity > volume.capacity && shrink {
            return Err(bad_arg(
                "Invalid argument: can't expand capacity when the shrink flag is given".into(),
            ));
        }
        if capacity < volume.allocation && shrink && !has(StorageVolResizeFlag::Allocate) {
            volume.allocation = capacity;
        }
        if has(StorageVolResizeFlag::Allocate) {
            if others.saturating_add(capacity) > POOL_CAPACITY {
                return Err(status(
                    ErrorCode::OperationFailed,
                    ErrorDomain::Test,
                    format!(
                        "Not enough space left in storage pool '{pool_key}' to allocate {capacity} bytes"
                    ),
                ));
            }
            volume.allocation = capacity;
        }
        volume.capacity = capacity;
        volume
            .data
            .truncate(usize::try_from(capacity).unwrap_or(usize::MAX));
        Ok(Response::new(ResizeStorageVolResponse::default()))
    }

    async fn get_storage_vol_info(
        &self,
        request: Request<GetStorageVolInfoRequest>,
    ) -> Result<Response<GetStorageVolInfoResponse>, Status> {
        let mut objects = self.state.lock();
        let (pool_key, name) = find_vol(&objects, request.get_ref().vol.as_ref())?;
        let pool = active_pool(&mut objects, &pool_key)?;
        let kind = volume_type(&pool.pool_type);
        let volume = pool
            .volumes
            .get(&name)
            .ok_or_else(|| no_vol(format!("no storage vol with matching name '{name}'")))?;
        Ok(Response::new(GetStorageVolInfoResponse {
            r#type: kind as i32,
            capacity_bytes: volume.capacity,
            allocation_bytes: volume.allocation,
            physical_bytes: Some(volume.allocation),
        }))
    }

    async fn get_storage_vol_xml(
        &self,
        request: Request<GetStorageVolXmlRequest>,
    ) -> Result<Response<GetStorageVolXmlResponse>, Status> {
        let mut objects = self.state.lock();
        let (pool_key, name) = find_vol(&objects, request.get_ref().vol.as_ref())?;
        let pool = active_pool(&mut objects, &pool_key)?;
        let volume = pool
            .volumes
            .get(&name)
            .ok_or_else(|| no_vol(format!("no storage vol with matching name '{name}'")))?;
        Ok(Response::new(GetStorageVolXmlResponse {
            xml: format_volume(volume, pool),
        }))
    }

    async fn get_storage_vol_path(
        &self,
        request: Request<GetStorageVolPathRequest>,
    ) -> Result<Response<GetStorageVolPathResponse>, Status> {
        let mut objects = self.state.lock();
        let (pool, name) = find_vol(&objects, request.get_ref().vol.as_ref())?;
        let path = vol_mut(&mut objects, &pool, &name)?.path.clone();
        Ok(Response::new(GetStorageVolPathResponse { path }))
    }

    async fn lookup_storage_vol(
        &self,
        request: Request<LookupStorageVolRequest>,
    ) -> Result<Response<LookupStorageVolResponse>, Status> {
        let mut objects = self.state.lock();
        let (pool_key, name) = find_vol(&objects, request.get_ref().vol.as_ref())?;
        let pool = active_pool(&mut objects, &pool_key)?;
        let vol = pool.volumes.get(&name).map(|v| vol_summary(v, pool));
        Ok(Response::new(LookupStorageVolResponse { vol }))
    }

    async fn list_storage_vols(
        &self,
        request: Request<ListStorageVolsRequest>,
    ) -> Result<Response<ListStorageVolsResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find_pool(&objects, request.get_ref().pool.as_ref())?;
        let pool = active_pool(&mut objects, &key)?;
        let vols = pool.volumes.values().map(|v| vol_summary(v, pool)).collect();
        Ok(Response::new(ListStorageVolsResponse { vols }))
    }

    async fn upload_storage_vol(
        &self,
        request: Request<Streaming<UploadStorageVolRequest>>,
    ) -> Result<Response<UploadStorageVolResponse>, Status> {
        let mut messages = request.into_inner();
        let first = messages.message().await?.and_then(|m| m.message).ok_or_else(|| {
            bad_arg("Invalid argument: an upload starts with a start message naming the volume".into())
        })?;
        let upload_storage_vol_request::Message::Start(start) = first else {
            return Err(bad_arg(
                "Invalid argument: an upload starts with a start message naming the volume".into(),
            ));
        };
        let sparse = start.flags & StorageVolUploadFlag::SparseStream as u32 != 0;
        if start.flags & !(StorageVolUploadFlag::SparseStream as u32) != 0 {
            return Err(bad_arg(format!(
                "Invalid argument: unsupported upload flags {:#x}: use bits of StorageVolUploadFlag",
                start.flags
            )));
        }
        let (pool, name) = {
            let mut objects = self.state.lock();
            let (pool, name) = find_vol(&objects, start.vol.as_ref())?;
            let capacity = vol_mut(&mut objects, &pool, &name)?.capacity;
            let end = start.offset.saturating_add(start.length);
            if start.offset > capacity || end > capacity {
                return Err(bad_arg(format!(
                    "Invalid argument: the range {}+{} is past the end of volume '{name}' ({capacity} bytes)",
                    start.offset, start.length
                )));
            }
            (pool, name)
        };
        let mut position = start.offset;
        let (mut data_bytes, mut hole_bytes) = (0u64, 0u64);
        while let Some(message) = messages.message().await? {
            let (chunk, hole) = match message.message {
                Some(upload_storage_vol_request::Message::Data(data)) => (Some(data), 0),
                Some(upload_storage_vol_request::Message::Hole(h)) if sparse => (None, h.length),
                Some(upload_storage_vol_request::Message::Hole(_)) => {
                    return Err(bad_arg(
                        "Invalid argument: hole records need the SPARSE_STREAM flag in the start message"
                            .into(),
                    ));
                }
                Some(upload_storage_vol_request::Message::Start(_)) | None => {
                    return Err(bad_arg(
                        "Invalid argument: only the first upload message may be a start".into(),
                    ));
                }
            };
            let len = chunk.as_ref().map_or(hole, |c| c.len() as u64);
            let end = position.saturating_add(len);
            if start.length > 0 && end > start.offset + start.length {
                return Err(bad_arg(format!(
                    "Invalid argument: the upload sent more than the {} bytes it announced",
                    start.length
                )));
            }
            let mut objects = self.state.lock();
            let volume = vol_mut(&mut objects, &pool, &name)?;
            if end > volume.capacity {
                return Err(bad_arg(format!(
                    "Invalid argument: the upload runs past the end of volume '{name}' ({} bytes)",
                    volume.capacity
                )));
            }
            let (from, to) = (position as usize, end as usize);
            match chunk {
                Some(_) if end > MAX_DATA => {
                    return Err(status(
                        ErrorCode::OperationUnsupported,
                        ErrorDomain::Test,
                        format!(
                            "Operation not supported: the test driver keeps at most {} MiB of data per volume in memory; send zeros as holes (--sparse)",
                            MAX_DATA >> 20
                        ),
                    ));
                }
                Some(bytes) => {
                    if volume.data.len() < to {
                        volume.data.resize(to, 0);
                    }
                    volume.data[from..to].copy_from_slice(&bytes);
                    data_bytes += len;
                }
                None => {
                    // A hole reads as zeros: clear what was there.
                    let stop = to.min(volume.data.len());
                    if from < stop {
                        volume.data[from..stop].fill(0);
                    }
                    hole_bytes += len;
                }
            }
            position = end;
        }
        Ok(Response::new(UploadStorageVolResponse {
            data_bytes,
            hole_bytes,
        }))
    }

    async fn download_storage_vol(
        &self,
        request: Request<DownloadStorageVolRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        let request = request.into_inner();
        let sparse = request.flags & StorageVolDownloadFlag::SparseStream as u32 != 0;
        if request.flags & !(StorageVolDownloadFlag::SparseStream as u32) != 0 {
            return Err(bad_arg(format!(
                "Invalid argument: unsupported download flags {:#x}: use bits of StorageVolDownloadFlag",
                request.flags
            )));
        }
        let (pool, name, end) = {
            let mut objects = self.state.lock();
            let (pool, name) = find_vol(&objects, request.vol.as_ref())?;
            let capacity = vol_mut(&mut objects, &pool, &name)?.capacity;
            let end = if request.length == 0 {
                capacity
            } else {
                request.offset.saturating_add(request.length)
            };
            if request.offset > capacity || end > capacity {
                return Err(bad_arg(format!(
                    "Invalid argument: the range {}+{} is past the end of volume '{name}' ({capacity} bytes)",
                    request.offset, request.length
                )));
            }
            (pool, name, end)
        };
        let state = Arc::clone(&self.state);
        let start = request.offset;
        let total = end - start;
        let pieces = futures_unfold(start, move |pos| {
            if pos >= end {
                return None;
            }
            let mut objects = state.lock();
            let volume = match vol_mut(&mut objects, &pool, &name) {
                Ok(v) => v,
                Err(e) => return Some((Err(e), end)),
            };
            let data_end = (volume.data.len() as u64).min(end);
            let piece = if sparse && pos >= data_end {
                // Everything left is past the written data: one hole.
                (download_storage_vol_response::Chunk::HoleLength(end - pos), end)
            } else {
                let stop = (pos + CHUNK).min(end);
                let mut bytes = vec![0u8; (stop - pos) as usize];
                let copy_end = stop.min(volume.data.len() as u64);
                if pos < copy_end {
                    bytes[..(copy_end - pos) as usize]
                        .copy_from_slice(&volume.data[pos as usize..copy_end as usize]);
                }
                if sparse && bytes.iter().all(|b| *b == 0) {
                    (download_storage_vol_response::Chunk::HoleLength(stop - pos), stop)
                } else {
                    (download_storage_vol_response::Chunk::Data(bytes), stop)
                }
            };
            let (chunk, next) = piece;
            Some((
                Ok(DownloadStorageVolResponse {
                    offset: pos,
                    chunk: Some(chunk),
                    bytes_done: next - start,
                    bytes_total: total,
                }),
                next,
            ))
        });
        Ok(Response::new(Box::pin(pieces)))
    }
}

/// A stream that calls `next` with its state until it returns `None` (a synchronous
/// `futures::stream::unfold`).
fn futures_unfold<S, T, F>(state: S, next: F) -> impl Stream<Item = T> + Send + 'static
where
    S: Send + 'static,
    T: Send + 'static,
    F: FnMut(S) -> Option<(T, S)> + Send + 'static,
{
    struct Unfold<S, F> {
        state: Option<S>,
        next: F,
    }
    impl<S, T, F> Iterator for Unfold<S, F>
    where
        F: FnMut(S) -> Option<(T, S)>,
    {
        type Item = T;
        fn next(&mut self) -> Option<T> {
            let state = self.state.take()?;
            let (item, state) = (self.next)(state)?;
            self.state = Some(state);
            Some(item)
        }
    }
    tokio_stream::iter(Unfold {
        state: Some(state),
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PoolRecord {
        parse_pool("<pool type='dir'><name>p</name><target><path>/p/</path></target></pool>").expect("pool")
    }

    #[test]
    fn pool_parse_reads_type_target_and_fills_uuid() {
        let p = pool();
        assert_eq!((p.pool_type.as_str(), p.target_path.as_str()), ("dir", "/p"));
        assert!(p.xml.contains(&p.uuid));
    }

    #[test]
    fn pool_parse_refuses_bad_pools() {
        for bad in [
            "<pool><name>a</name></pool>",
            "<pool type='dir'><name>a</name></pool>",
            "<pool type='dir'><target><path>/x</path></target></pool>",
            "<volume type='dir'/>",
        ] {
            let err = parse_pool(bad).expect_err(bad);
            assert_eq!(
                rvirt_proto::error::from_status(&err).code(),
                ErrorCode::XmlError,
                "{bad}"
            );
        }
    }

    #[test]
    fn volume_parse_converts_units_and_derives_path_and_key() {
        let v = parse_volume(
            "<volume><name>v</name><capacity unit='MiB'>2</capacity><target><format type='qcow2'/></target></volume>",
            &pool(),
        )
        .expect("vol");
        assert_eq!((v.capacity, v.allocation), (2 << 20, 2 << 20));
        assert_eq!(
            (v.path.as_str(), v.key.as_str(), v.format.as_str()),
            ("/p/v", "/p/v", "qcow2")
        );
    }

    #[test]
    fn volume_parse_refuses_missing_capacity_and_bad_units() {
        for bad in [
            "<volume><name>v</name></volume>",
            "<volume><name>v</name><capacity unit='parsecs'>1</capacity></volume>",
            "<volume><capacity>1</capacity></volume>",
        ] {
            let err = parse_volume(bad, &pool()).expect_err(bad);
            assert_eq!(
                rvirt_proto::error::from_status(&err).code(),
                ErrorCode::XmlError,
                "{bad}"
            );
        }
    }

    #[test]
    fn node_volumes_are_not_part_of_the_pool_definition() {
        let p = parse_pool(
            "<pool type='dir'>\n  <name>p</name>\n  <target><path>/p</path></target>\n  <volume><name>v</name><capacity>1</capacity></volume>\n</pool>",
        )
        .expect("pool");
        assert!(!p.xml.contains("<volume>"), "{}", p.xml);
    }
}
