//! Secrets: typed handles named after libvirt's API (`virSecret*`), on a [`Connect`]. Values
//! are bytes; callers should wipe them when done.

use rvirt_proto::v1::secret_service_client::SecretServiceClient;
use rvirt_proto::v1::*;

use crate::connect::{Connect, GrpcTransport};
use crate::error::Result;

const SERVICE: &str = "rvirt.v1.SecretService";

/// A secret as seen when it was looked up (libvirt's `virSecretPtr`); never holds the value.
#[derive(Debug, Clone)]
pub struct Secret {
    conn: Connect,
    summary: rvirt_proto::v1::Secret,
}

impl Connect {
    fn secret_client(&self) -> Result<SecretServiceClient<GrpcTransport>> {
        Ok(SecretServiceClient::new(self.transport(SERVICE)?))
    }

    fn secret_handle(&self, summary: Option<rvirt_proto::v1::Secret>) -> Secret {
        Secret {
            conn: self.clone(),
            summary: summary.unwrap_or_default(),
        }
    }

    async fn lookup_secret(&self, key: secret_ref::Key) -> Result<Secret> {
        let reply = self
            .secret_client()?
            .lookup_secret(LookupSecretRequest {
                secret: Some(SecretRef { key: Some(key) }),
            })
            .await?;
        Ok(self.secret_handle(reply.into_inner().secret))
    }

    /// `virSecretLookupByUUIDString`.
    pub async fn lookup_secret_by_uuid(&self, uuid: &str) -> Result<Secret> {
        self.lookup_secret(secret_ref::Key::Uuid(uuid.to_owned())).await
    }

    /// `virSecretLookupByUsage`.
    pub async fn lookup_secret_by_usage(
        &self,
        usage_type: SecretUsageType,
        usage_id: &str,
    ) -> Result<Secret> {
        self.lookup_secret(secret_ref::Key::Usage(SecretUsage {
            usage_type: usage_type as i32,
            usage_id: usage_id.to_owned(),
        }))
        .await
    }

    /// `virConnectListAllSecrets`: `flags` are `SecretListFlag` bits.
    pub async fn list_all_secrets(&self, flags: u32) -> Result<Vec<Secret>> {
        let reply = self
            .secret_client()?
            .list_secrets(ListSecretsRequest { flags })
            .await?;
        Ok(reply
            .into_inner()
            .secrets
            .into_iter()
            .map(|s| self.secret_handle(Some(s)))
            .collect())
    }

    /// `virSecretDefineXML`: `flags` are `SecretDefineFlag` bits.
    pub async fn define_secret_xml(&self, xml: &str, flags: u32) -> Result<Secret> {
        let reply = self
            .secret_client()?
            .define_secret_xml(DefineSecretXmlRequest {
                xml: xml.into(),
                flags,
            })
            .await?;
        Ok(self.secret_handle(reply.into_inner().secret))
    }
}

impl Secret {
    fn reference(&self) -> Option<SecretRef> {
        Some(SecretRef {
            key: Some(secret_ref::Key::Uuid(self.summary.uuid.clone())),
        })
    }

    fn client(&self) -> Result<SecretServiceClient<GrpcTransport>> {
        self.conn.secret_client()
    }

    /// `virSecretGetUUIDString`.
    pub fn uuid(&self) -> &str {
        &self.summary.uuid
    }

    /// `virSecretGetUsageType`.
    pub fn usage_type(&self) -> SecretUsageType {
        self.summary.usage_type()
    }

    /// `virSecretGetUsageID`.
    pub fn usage_id(&self) -> &str {
        &self.summary.usage_id
    }

    /// The summary returned by the last call (flags, description, whether a value is set).
    pub fn summary(&self) -> &rvirt_proto::v1::Secret {
        &self.summary
    }

    /// `virSecretGetXMLDesc`: the definition, never the value.
    pub async fn xml_desc(&self) -> Result<String> {
        let reply = self
            .client()?
            .get_secret_xml(GetSecretXmlRequest {
                secret: self.reference(),
            })
            .await?;
        Ok(reply.into_inner().xml)
    }

    /// `virSecretSetValue`.
    pub async fn set_value(&self, value: &[u8]) -> Result<()> {
        self.client()?
            .set_secret_value(SetSecretValueRequest {
                secret: self.reference(),
                value: value.to_vec(),
            })
            .await?;
        Ok(())
    }

    /// `virSecretGetValue`: refused for a `private` secret.
    pub async fn value(&self) -> Result<Vec<u8>> {
        let reply = self
            .client()?
            .get_secret_value(GetSecretValueRequest {
                secret: self.reference(),
            })
            .await?;
        Ok(reply.into_inner().value)
    }

    /// `virSecretUndefine`: removes the secret and its value.
    pub async fn undefine(&self) -> Result<()> {
        self.client()?
            .undefine_secret(UndefineSecretRequest {
                secret: self.reference(),
            })
            .await?;
        Ok(())
    }
}

/// One message of a `WatchSecretEvents` stream as the watch machinery reads it
/// ([`crate::watch::subscribe`]), for callers that open the stream themselves.
pub fn split_secret_event(
    response: WatchSecretEventsResponse,
) -> Option<crate::watch::WatchMessage<SecretEvent>> {
    use crate::watch::WatchMessage;
    use watch_secret_events_response::Message;
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
    /// Secret events (`virConnectSecretEventRegisterAny`), resumable like
    /// [`Connect::domain_events`]. Events never carry values.
    pub async fn secret_events(
        &self,
        filter: WatchSecretEventsRequest,
    ) -> Result<crate::watch::Subscription<SecretEvent>> {
        let transport = self.transport(SERVICE)?;
        let open: crate::watch::Opener<WatchSecretEventsResponse> = Box::new(move |epoch, sequence| {
            let mut client = SecretServiceClient::new(transport.clone());
            let request = WatchSecretEventsRequest {
                since_epoch: epoch,
                since_sequence: sequence,
                ..filter.clone()
            };
            Box::pin(async move {
                let stream = client.watch_secret_events(request).await?.into_inner();
                Ok(Box::pin(stream) as crate::watch::RawStream<WatchSecretEventsResponse>)
            })
        });
        crate::watch::subscribe(open, split_secret_event, None).await
    }
}
