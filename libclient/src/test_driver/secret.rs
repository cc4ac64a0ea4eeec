//! The test driver's secret service: libvirt's secret driver rules (one secret per usage, a
//! private secret's value is never returned, usage cannot change on redefinition), in memory,
//! with events. Values never leave the process except through GetSecretValue.

use std::pin::Pin;
use std::sync::Arc;

use rvirt_proto::error::status;
use rvirt_proto::v1::secret_service_server::SecretService;
use rvirt_proto::v1::*;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::node::{
    Objects, SecretRecord, TestState, XmlNode, canonical_uuid, insert_uuid, uuid_v4, xml_error,
};
use crate::events::Delivery;

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchSecretEventsResponse, Status>> + Send + 'static>>;

/// The usage type named by `<usage type=...>`, and the element that holds its id.
fn usage_of(name: &str) -> Option<(SecretUsageType, &'static str)> {
    match name {
        "volume" => Some((SecretUsageType::Volume, "volume")),
        "ceph" => Some((SecretUsageType::Ceph, "name")),
        "iscsi" => Some((SecretUsageType::Iscsi, "target")),
        "tls" => Some((SecretUsageType::Tls, "name")),
        "vtpm" => Some((SecretUsageType::Vtpm, "name")),
        _ => None,
    }
}

/// The name of a usage type, as `<usage type=...>` spells it.
fn usage_name(usage: SecretUsageType) -> &'static str {
    match usage {
        SecretUsageType::None => "none",
        SecretUsageType::Volume => "volume",
        SecretUsageType::Ceph => "ceph",
        SecretUsageType::Iscsi => "iscsi",
        SecretUsageType::Tls => "tls",
        SecretUsageType::Vtpm => "vtpm",
    }
}

fn yes_no(value: Option<&str>, what: &str) -> Result<bool, Status> {
    match value {
        None | Some("no") => Ok(false),
        Some("yes") => Ok(true),
        Some(other) => Err(xml_error(format!(
            "The secret's {what} attribute is {other:?}: use 'yes' or 'no'"
        ))),
    }
}

/// Reads a `<secret>`: flags, UUID (filled in when absent), description and usage. The one
/// place secret XML is read, to be replaced by `rvirt_conf`'s model.
pub fn parse_secret(xml: &str) -> Result<SecretRecord, Status> {
    let root = XmlNode::parse(xml)?;
    if root.name != "secret" {
        return Err(xml_error(format!(
            "Expected a <secret> element, found <{}>",
            root.name
        )));
    }
    let ephemeral = yes_no(root.attr("ephemeral"), "ephemeral")?;
    let private = yes_no(root.attr("private"), "private")?;
    let (usage_type, usage_id) = match root.child("usage") {
        None => (SecretUsageType::None, String::new()),
        Some(usage) => {
            let kind = usage
                .attr("type")
                .ok_or_else(|| xml_error("The secret's <usage> has no type attribute: add type='volume' (or ceph, iscsi, tls, vtpm)"))?;
            let (usage_type, element) = usage_of(kind).ok_or_else(|| {
                xml_error(format!(
                    "Unknown secret usage type {kind:?}: use volume, ceph, iscsi, tls or vtpm"
                ))
            })?;
            let id = usage
                .text_at(&[element])
                .filter(|id| !id.is_empty())
                .ok_or_else(|| {
                    xml_error(format!("The secret's <usage type='{kind}'> needs a <{element}>"))
                })?;
            (usage_type, id)
        }
    };
    let description = root.text_at(&["description"]).unwrap_or_default();
    let (uuid, xml) = match root.text_at(&["uuid"]) {
        Some(text) => (
            canonical_uuid(&text)
                .ok_or_else(|| xml_error(format!("The secret <uuid> {text:?} is not a UUID")))?,
            xml.trim().to_owned(),
        ),
        None => {
            let uuid = uuid_v4();
            let xml = insert_uuid(xml, &uuid);
            (uuid, xml)
        }
    };
    Ok(SecretRecord {
        uuid,
        usage_type,
        usage_id,
        ephemeral,
        private,
        description,
        xml,
        value: None,
    })
}

fn describe(usage_type: SecretUsageType, id: &str) -> String {
    if usage_type == SecretUsageType::None {
        "no usage".into()
    } else {
        format!("{} {id}", usage_name(usage_type))
    }
}

/// The UUID (the map key) of the secret a reference names.
/// The secret a reference names, once the access rules that name secrets allow the call on it.
fn find(objects: &Objects, secret: Option<&SecretRef>) -> Result<String, Status> {
    let uuid = find_unchecked(objects, secret)?;
    let usage = objects.secrets.get(&uuid).map_or("", |s| s.usage_id.as_str());
    rvirt_proto::access::authorize(&["secret"], &[&uuid, usage])?;
    Ok(uuid)
}

fn find_unchecked(objects: &Objects, secret: Option<&SecretRef>) -> Result<String, Status> {
    let key = secret.and_then(|s| s.key.as_ref()).ok_or_else(|| {
        status(
            ErrorCode::InvalidArg,
            ErrorDomain::Test,
            "No secret given: set the secret's UUID or usage",
        )
    })?;
    let not_found = |what: String| {
        status(
            ErrorCode::NoSecret,
            ErrorDomain::Test,
            format!("Secret not found: {what}"),
        )
    };
    match key {
        secret_ref::Key::Uuid(text) => {
            let uuid = canonical_uuid(text).ok_or_else(|| {
                status(
                    ErrorCode::InvalidArg,
                    ErrorDomain::Test,
                    format!("{text:?} is not a UUID: use the form 0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"),
                )
            })?;
            if objects.secrets.contains_key(&uuid) {
                Ok(uuid)
            } else {
                Err(not_found(format!("no secret with matching uuid '{text}'")))
            }
        }
        secret_ref::Key::Usage(usage) => objects
            .secrets
            .values()
            .find(|s| s.usage_type as i32 == usage.usage_type && s.usage_id == usage.usage_id)
            .map(|s| s.uuid.clone())
            .ok_or_else(|| not_found(format!("no secret with matching usage '{}'", usage.usage_id))),
    }
}

/// The test driver's secret service.
#[derive(Debug)]
pub struct TestSecrets {
    state: Arc<TestState>,
}

impl TestSecrets {
    /// The secret service of a test driver instance.
    pub fn new(state: Arc<TestState>) -> Self {
        TestSecrets { state }
    }

    fn emit(&self, secret: &SecretRecord, event: secret_event::Event) {
        self.state.secret_events.emit((secret.identity(), event));
    }

    fn lifecycle(&self, secret: &SecretRecord, kind: SecretEventLifecycleType) {
        self.emit(
            secret,
            secret_event::Event::Lifecycle(SecretLifecycleEvent {
                r#type: kind as i32,
                detail: 0,
            }),
        );
    }
}

#[tonic::async_trait]
impl SecretService for TestSecrets {
    async fn define_secret_xml(
        &self,
        request: Request<DefineSecretXmlRequest>,
    ) -> Result<Response<DefineSecretXmlResponse>, Status> {
        let mut parsed = parse_secret(&request.get_ref().xml)?;
        rvirt_proto::access::authorize(&["secret"], &[&parsed.uuid, &parsed.usage_id])?;
        let mut objects = self.state.lock();
        let clash = objects.secrets.values().find(|s| {
            s.uuid != parsed.uuid
                && parsed.usage_type != SecretUsageType::None
                && s.usage_type == parsed.usage_type
                && s.usage_id == parsed.usage_id
        });
        if let Some(other) = clash {
            return Err(status(
                ErrorCode::OperationInvalid,
                ErrorDomain::Test,
                format!(
                    "A secret with UUID {} is already defined for use with {}: redefine that one, or undefine it first",
                    other.uuid,
                    describe(parsed.usage_type, &parsed.usage_id)
                ),
            ));
        }
        if let Some(old) = objects.secrets.get(&parsed.uuid) {
            if old.usage_type != parsed.usage_type || old.usage_id != parsed.usage_id {
                return Err(status(
                    ErrorCode::OperationInvalid,
                    ErrorDomain::Test,
                    format!(
                        "A secret with UUID {} is already defined for use with {}: its usage cannot change; undefine it first",
                        old.uuid,
                        describe(old.usage_type, &old.usage_id)
                    ),
                ));
            }
            if old.private && !parsed.private {
                return Err(status(
                    ErrorCode::OperationInvalid,
                    ErrorDomain::Test,
                    format!(
                        "Cannot change the private flag of existing secret {}: undefine it and define a new one",
                        old.uuid
                    ),
                ));
            }
            parsed.value = old.value.clone();
        }
        objects.secrets.insert(parsed.uuid.clone(), parsed.clone());
        drop(objects);
        self.lifecycle(&parsed, SecretEventLifecycleType::Defined);
        Ok(Response::new(DefineSecretXmlResponse {
            secret: Some(parsed.summary()),
        }))
    }

    async fn undefine_secret(
        &self,
        request: Request<UndefineSecretRequest>,
    ) -> Result<Response<UndefineSecretResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find(&objects, request.get_ref().secret.as_ref())?;
        let removed = objects.secrets.remove(&key);
        drop(objects);
        if let Some(secret) = removed {
            self.lifecycle(&secret, SecretEventLifecycleType::Undefined);
        }
        Ok(Response::new(UndefineSecretResponse::default()))
    }

    async fn lookup_secret(
        &self,
        request: Request<LookupSecretRequest>,
    ) -> Result<Response<LookupSecretResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().secret.as_ref())?;
        let secret = objects.secrets.get(&key).map(SecretRecord::summary);
        Ok(Response::new(LookupSecretResponse { secret }))
    }

    async fn list_secrets(
        &self,
        request: Request<ListSecretsRequest>,
    ) -> Result<Response<ListSecretsResponse>, Status> {
        let flags = request.get_ref().flags;
        let has = |f: SecretListFlag| flags & (f as u32) != 0;
        let pair =
            |yes, no, value: bool| (!has(yes) && !has(no)) || (has(yes) && value) || (has(no) && !value);
        let objects = self.state.lock();
        let secrets = objects
            .secrets
            .values()
            .filter(|s| {
                pair(
                    SecretListFlag::Ephemeral,
                    SecretListFlag::NoEphemeral,
                    s.ephemeral,
                )
            })
            .filter(|s| pair(SecretListFlag::Private, SecretListFlag::NoPrivate, s.private))
            .filter(|s| rvirt_proto::access::visible(&[&s.uuid, &s.usage_id]))
            .map(SecretRecord::summary)
            .collect();
        Ok(Response::new(ListSecretsResponse { secrets }))
    }

    async fn get_secret_xml(
        &self,
        request: Request<GetSecretXmlRequest>,
    ) -> Result<Response<GetSecretXmlResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().secret.as_ref())?;
        let xml = objects
            .secrets
            .get(&key)
            .map(|s| s.xml.clone())
            .unwrap_or_default();
        Ok(Response::new(GetSecretXmlResponse { xml }))
    }

    async fn set_secret_value(
        &self,
        request: Request<SetSecretValueRequest>,
    ) -> Result<Response<SetSecretValueResponse>, Status> {
        let request = request.into_inner();
        let mut objects = self.state.lock();
        let key = find(&objects, request.secret.as_ref())?;
        let Some(secret) = objects.secrets.get_mut(&key) else {
            return Err(status(
                ErrorCode::NoSecret,
                ErrorDomain::Test,
                format!("Secret not found: {key}"),
            ));
        };
        secret.value = Some(request.value);
        let snapshot = SecretRecord {
            value: None,
            ..secret.clone()
        };
        drop(objects);
        self.emit(
            &snapshot,
            secret_event::Event::ValueChanged(SecretValueChangedEvent {}),
        );
        Ok(Response::new(SetSecretValueResponse::default()))
    }

    async fn get_secret_value(
        &self,
        request: Request<GetSecretValueRequest>,
    ) -> Result<Response<GetSecretValueResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().secret.as_ref())?;
        let Some(secret) = objects.secrets.get(&key) else {
            return Err(status(
                ErrorCode::NoSecret,
                ErrorDomain::Test,
                format!("Secret not found: {key}"),
            ));
        };
        if secret.private {
            return Err(status(
                ErrorCode::OperationDenied,
                ErrorDomain::Test,
                format!(
                    "Operation not allowed: secret {key} is private: its value is never returned to clients"
                ),
            ));
        }
        let value = secret.value.clone().ok_or_else(|| {
            status(
                ErrorCode::NoSecret,
                ErrorDomain::Test,
                format!(
                    "Secret not found: secret '{key}' does not have a value: set one with secret-set-value"
                ),
            )
        })?;
        Ok(Response::new(GetSecretValueResponse { value }))
    }

    async fn watch_secret_events(
        &self,
        request: Request<WatchSecretEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let request = request.into_inner();
        let wanted = request.event_ids.clone();
        let filter = request.secret.and_then(|s| s.key);
        let events = self
            .state
            .secret_events
            .watch(&request.since_epoch, request.since_sequence);
        let epoch = self.state.secret_events.epoch().to_owned();
        let stream = events.filter_map(move |delivery| {
            let message = match delivery {
                Delivery::Event(e) => {
                    let (who, event) = &e.event;
                    let id = match event {
                        secret_event::Event::Lifecycle(_) => SecretEventId::Lifecycle,
                        secret_event::Event::ValueChanged(_) => SecretEventId::ValueChanged,
                    };
                    if !wanted.is_empty() && !wanted.contains(&(id as i32)) {
                        return None;
                    }
                    let matches = match &filter {
                        None => true,
                        Some(secret_ref::Key::Uuid(u)) => {
                            canonical_uuid(u).as_deref() == Some(who.uuid.as_str())
                        }
                        Some(secret_ref::Key::Usage(u)) => {
                            who.usage_type == u.usage_type && who.usage_id == u.usage_id
                        }
                    };
                    if !matches {
                        return None;
                    }
                    watch_secret_events_response::Message::Event(SecretEvent {
                        sequence: e.sequence,
                        epoch: epoch.clone(),
                        time: Some(prost_types::Timestamp::from(e.time)),
                        secret: Some(who.clone()),
                        event: Some(*event),
                    })
                }
                Delivery::CaughtUp {
                    epoch,
                    current_sequence,
                } => watch_secret_events_response::Message::CaughtUp(CaughtUp {
                    epoch,
                    current_sequence,
                }),
                Delivery::ResyncRequired {
                    reason,
                    epoch,
                    requested_sequence,
                    oldest_retained_sequence,
                    current_sequence,
                } => watch_secret_events_response::Message::ResyncRequired(ResyncRequired {
                    reason: rvirt_proto::v1::ResyncReason::from(reason) as i32,
                    epoch,
                    requested_sequence,
                    oldest_retained_sequence,
                    current_sequence,
                }),
            };
            Some(Ok(WatchSecretEventsResponse {
                message: Some(message),
            }))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_flags_usage_and_description() {
        let s = parse_secret(
            "<secret ephemeral='no' private='yes'><description>d</description><usage type='ceph'><name>client.admin</name></usage></secret>",
        )
        .expect("parse");
        assert!(s.private && !s.ephemeral);
        assert_eq!(
            (s.usage_type, s.usage_id.as_str()),
            (SecretUsageType::Ceph, "client.admin")
        );
        assert_eq!(s.description, "d");
        assert!(s.xml.contains(&s.uuid), "{}", s.xml);
    }

    #[test]
    fn parse_refuses_bad_secrets() {
        for bad in [
            "<secret private='maybe'/>",
            "<secret><usage type='floppy'><name>x</name></usage></secret>",
            "<secret><usage type='volume'/></secret>",
            "<secret><uuid>nope</uuid></secret>",
            "<domain/>",
        ] {
            let err = parse_secret(bad).expect_err(bad);
            assert_eq!(
                rvirt_proto::error::from_status(&err).code(),
                ErrorCode::XmlError,
                "{bad}"
            );
        }
    }
}
