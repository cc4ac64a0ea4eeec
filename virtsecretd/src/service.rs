//! `SecretService`: the gRPC adapter over [`SecretDriver`]. It decodes requests, calls the
//! driver and maps its errors; access levels were checked before it runs, by the runtime.

use std::sync::Arc;

use rvirt_conf::secret::SecretUsageType;
use rvirt_daemon::events::Delivery;
use rvirt_proto::error::status;
use rvirt_proto::v1::secret_service_server::{SecretService, SecretServiceServer};
use rvirt_proto::v1::{self as pb, ErrorCode, ErrorDomain, secret_ref, watch_secret_events_response};
use tokio_stream::StreamExt as _;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::driver::{SecretDriver, SecretError, SecretEvent, SecretEventKind, SecretInfo, SecretKey};
use crate::value::SecretValue;

/// The service.
#[derive(Debug, Clone)]
pub struct SecretApi {
    driver: Arc<SecretDriver>,
}

impl SecretApi {
    /// The service over `driver`.
    pub fn new(driver: Arc<SecretDriver>) -> Self {
        SecretApi { driver }
    }

    /// The tonic server.
    pub fn into_server(self) -> SecretServiceServer<Self> {
        SecretServiceServer::new(self)
    }
}

fn invalid(message: impl Into<String>) -> Status {
    status(ErrorCode::InvalidArg, ErrorDomain::Secret, message)
}

fn err(e: SecretError) -> Status {
    e.to_status()
}

fn usage_type(number: i32) -> Result<SecretUsageType, Status> {
    SecretUsageType::from_number(number).ok_or_else(|| {
        if number == pb::SecretUsageType::None as i32 {
            invalid("A secret cannot be looked up by usage type NONE: give its UUID instead")
        } else {
            invalid(format!(
                "Unknown secret usage type {number}: use a SecretUsageType value"
            ))
        }
    })
}

/// The driver's key for a `SecretRef`.
pub fn secret_key(secret: Option<pb::SecretRef>) -> Result<SecretKey, Status> {
    match secret.and_then(|s| s.key) {
        Some(secret_ref::Key::Uuid(uuid)) => Ok(SecretKey::Uuid(uuid)),
        Some(secret_ref::Key::Usage(usage)) => {
            Ok(SecretKey::Usage(usage_type(usage.usage_type)?, usage.usage_id))
        }
        None => Err(invalid(
            "The request names no secret: set `secret` to a UUID or a usage",
        )),
    }
}

fn to_pb(info: &SecretInfo) -> pb::Secret {
    let def = &info.def;
    pb::Secret {
        uuid: def.uuid.clone(),
        usage_type: def.usage_type().map_or(0, SecretUsageType::number),
        usage_id: def.usage_id().to_owned(),
        ephemeral: def.ephemeral,
        private: def.private,
        description: def.description.clone().unwrap_or_default(),
        has_value: info.has_value,
    }
}

/// Which events a watch wants.
#[derive(Debug, Clone)]
struct WatchFilter {
    secret: Option<SecretKey>,
    lifecycle: bool,
    value_changed: bool,
}

impl WatchFilter {
    fn matches(&self, event: &SecretEvent) -> bool {
        let kind = match event.kind {
            SecretEventKind::Defined | SecretEventKind::Undefined => self.lifecycle,
            SecretEventKind::ValueChanged => self.value_changed,
        };
        kind && match &self.secret {
            None => true,
            Some(SecretKey::Uuid(uuid)) => *uuid == event.uuid,
            Some(SecretKey::Usage(t, id)) => event
                .usage
                .as_ref()
                .is_some_and(|u| u.usage_type == *t && u.id == *id),
        }
    }
}

fn event_to_pb(
    sequence: u64,
    epoch: &str,
    time: std::time::SystemTime,
    event: &SecretEvent,
) -> pb::SecretEvent {
    let body = match event.kind {
        SecretEventKind::Defined => pb::secret_event::Event::Lifecycle(pb::SecretLifecycleEvent {
            r#type: pb::SecretEventLifecycleType::Defined as i32,
            detail: 0,
        }),
        SecretEventKind::Undefined => pb::secret_event::Event::Lifecycle(pb::SecretLifecycleEvent {
            r#type: pb::SecretEventLifecycleType::Undefined as i32,
            detail: 0,
        }),
        SecretEventKind::ValueChanged => {
            pb::secret_event::Event::ValueChanged(pb::SecretValueChangedEvent {})
        }
    };
    pb::SecretEvent {
        sequence,
        epoch: epoch.to_owned(),
        time: Some(prost_types::Timestamp::from(time)),
        secret: Some(pb::SecretIdentity {
            uuid: event.uuid.clone(),
            usage_type: event.usage.as_ref().map_or(0, |u| u.usage_type.number()),
            usage_id: event.usage.as_ref().map_or_else(String::new, |u| u.id.clone()),
        }),
        event: Some(body),
    }
}

#[tonic::async_trait]
impl SecretService for SecretApi {
    async fn define_secret_xml(
        &self,
        request: Request<pb::DefineSecretXmlRequest>,
    ) -> Result<Response<pb::DefineSecretXmlResponse>, Status> {
        let request = request.into_inner();
        let info = self
            .driver
            .define(&request.xml, request.flags)
            .await
            .map_err(err)?;
        Ok(Response::new(pb::DefineSecretXmlResponse {
            secret: Some(to_pb(&info)),
        }))
    }

    async fn undefine_secret(
        &self,
        request: Request<pb::UndefineSecretRequest>,
    ) -> Result<Response<pb::UndefineSecretResponse>, Status> {
        let key = secret_key(request.into_inner().secret)?;
        self.driver.undefine(key).await.map_err(err)?;
        Ok(Response::new(pb::UndefineSecretResponse {}))
    }

    async fn lookup_secret(
        &self,
        request: Request<pb::LookupSecretRequest>,
    ) -> Result<Response<pb::LookupSecretResponse>, Status> {
        let key = secret_key(request.into_inner().secret)?;
        let info = self.driver.lookup(&key).map_err(err)?;
        Ok(Response::new(pb::LookupSecretResponse {
            secret: Some(to_pb(&info)),
        }))
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let secrets = self.driver.list(request.into_inner().flags).map_err(err)?;
        Ok(Response::new(pb::ListSecretsResponse {
            secrets: secrets
                .iter()
                .filter(|s| {
                    let usage = s.def.usage.as_ref().map_or("", |u| u.id.as_str());
                    rvirt_proto::access::visible(&[&s.def.uuid, usage])
                })
                .map(to_pb)
                .collect(),
        }))
    }

    async fn get_secret_xml(
        &self,
        request: Request<pb::GetSecretXmlRequest>,
    ) -> Result<Response<pb::GetSecretXmlResponse>, Status> {
        let key = secret_key(request.into_inner().secret)?;
        let xml = self.driver.xml(&key).map_err(err)?;
        Ok(Response::new(pb::GetSecretXmlResponse { xml }))
    }

    async fn set_secret_value(
        &self,
        request: Request<pb::SetSecretValueRequest>,
    ) -> Result<Response<pb::SetSecretValueResponse>, Status> {
        let request = request.into_inner();
        // The value moves into a wiped-on-drop buffer at once, before anything can fail.
        let value = SecretValue::new(request.value);
        let key = secret_key(request.secret)?;
        self.driver.set_value(key, value).await.map_err(err)?;
        Ok(Response::new(pb::SetSecretValueResponse {}))
    }

    async fn get_secret_value(
        &self,
        request: Request<pb::GetSecretValueRequest>,
    ) -> Result<Response<pb::GetSecretValueResponse>, Status> {
        let key = secret_key(request.into_inner().secret)?;
        let value = self.driver.get_value(&key).map_err(err)?;
        Ok(Response::new(pb::GetSecretValueResponse {
            value: value.into_message_bytes(),
        }))
    }

    async fn get_secret_value_internal(
        &self,
        request: Request<pb::GetSecretValueInternalRequest>,
    ) -> Result<Response<pb::GetSecretValueInternalResponse>, Status> {
        let request = request.into_inner();
        let token = zeroize::Zeroizing::new(request.token);
        let key = secret_key(request.secret)?;
        let value = self.driver.get_value_internal(&key, &token).map_err(err)?;
        Ok(Response::new(pb::GetSecretValueInternalResponse {
            value: value.into_message_bytes(),
        }))
    }

    async fn watch_secret_events(
        &self,
        request: Request<pb::WatchSecretEventsRequest>,
    ) -> Result<Response<BoxStream<pb::WatchSecretEventsResponse>>, Status> {
        let request = request.into_inner();
        let secret = match request.secret {
            None => None,
            Some(secret) => Some(match secret_key(Some(secret))? {
                SecretKey::Uuid(text) => {
                    SecretKey::Uuid(rvirt_conf::xml::canonical_uuid(&text).ok_or_else(|| {
                        invalid(format!(
                            "{text:?} is not a UUID: use the form 0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
                        ))
                    })?)
                }
                usage => usage,
            }),
        };
        let mut filter = WatchFilter {
            secret,
            lifecycle: request.event_ids.is_empty(),
            value_changed: request.event_ids.is_empty(),
        };
        for id in &request.event_ids {
            match pb::SecretEventId::try_from(*id) {
                Ok(pb::SecretEventId::Lifecycle) => filter.lifecycle = true,
                Ok(pb::SecretEventId::ValueChanged) => filter.value_changed = true,
                Err(_) => {
                    return Err(invalid(format!(
                        "Unknown secret event id {id}: use a SecretEventId value"
                    )));
                }
            }
        }
        let epoch = self.driver.events().epoch().to_owned();
        let gate = rvirt_proto::access::current_gate();
        let stream = self
            .driver
            .events()
            .watch(&request.since_epoch, request.since_sequence)
            .filter_map(move |delivery| {
                let message = match delivery {
                    Delivery::Event(e) => {
                        if !filter.matches(&e.event) {
                            return None;
                        }
                        // Events of secrets the caller may not see are left out, as from lists.
                        let usage = e.event.usage.as_ref().map_or("", |u| u.id.as_str());
                        if gate
                            .as_ref()
                            .is_some_and(|g| g.check(&[&e.event.uuid, usage]).is_err())
                        {
                            return None;
                        }
                        watch_secret_events_response::Message::Event(event_to_pb(
                            e.sequence, &epoch, e.time, &e.event,
                        ))
                    }
                    Delivery::CaughtUp {
                        epoch,
                        current_sequence,
                    } => watch_secret_events_response::Message::CaughtUp(pb::CaughtUp {
                        epoch,
                        current_sequence,
                    }),
                    Delivery::ResyncRequired {
                        reason,
                        epoch,
                        requested_sequence,
                        oldest_retained_sequence,
                        current_sequence,
                    } => watch_secret_events_response::Message::ResyncRequired(pb::ResyncRequired {
                        reason: pb::ResyncReason::from(reason) as i32,
                        epoch,
                        requested_sequence,
                        oldest_retained_sequence,
                        current_sequence,
                    }),
                };
                Some(Ok(pb::WatchSecretEventsResponse {
                    message: Some(message),
                }))
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
