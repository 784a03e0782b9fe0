//! What a client asks once it said hello: register, unregister, ack and ping, answered
//! as autopush-rs answers them.

use super::*;

impl Conn {
    pub(super) async fn on_register(&mut self, ws: &mut Ws, reg: Register) -> Result<(), End> {
        if self.fault(Step::Register) {
            return Err(End::Drop);
        }
        lock(&self.shared.stats).registers += 1;
        let uaid = self.uaid.clone().ok_or_else(|| sm_error("no uaid"))?;
        // autopush insists on the canonical form: lower case, dashed.
        let canonical = uuid::Uuid::try_parse(&reg.channel_id)
            .ok()
            .map(|u| u.hyphenated().to_string());
        if canonical.as_deref() != Some(reg.channel_id.as_str()) {
            return Err(sm_error("channelID is not a lower-case dashed UUID"));
        }
        let channel_id = reg.channel_id;

        // As autopush: the user is written before the endpoint is made, the key is only
        // base64url-decoded (padding trimmed) and hashed, never checked to be a P-256
        // point; a key that does not decode gets status 400.
        self.shared
            .store()
            .ensure_user(&uaid, now_ms())
            .map_err(internal)?;
        let key = match reg.key.as_deref() {
            None => None,
            Some(k) => match URL_SAFE_NO_PAD.decode(k.trim_end_matches('=')) {
                Ok(raw) => Some(raw),
                Err(_) => {
                    tracing::debug!(channel = %channel_id, "register with a bad key");
                    return self.register_reply(ws, &channel_id, 400, None).await;
                }
            },
        };
        if let Some(status) = self
            .shared
            .faults
            .as_ref()
            .and_then(|f| f.register_status())
        {
            return self.register_reply(ws, &channel_id, status, None).await;
        }
        self.shared
            .store()
            .upsert_channel(&uaid, &channel_id, key.as_deref(), now_ms())
            .map_err(internal)?;
        let endpoint = self
            .shared
            .endpoint(&uaid, &channel_id, key.as_deref())
            .map_err(internal)?;
        tracing::debug!(channel = %channel_id, vapid = key.is_some(), "registered");
        self.register_reply(ws, &channel_id, 200, Some(endpoint))
            .await
    }

    async fn register_reply(
        &mut self,
        ws: &mut Ws,
        channel_id: &str,
        status: u16,
        endpoint: Option<String>,
    ) -> Result<(), End> {
        self.reply_delay().await?;
        if self.omit_replies() {
            return Ok(());
        }
        // autopush always sends `pushEndpoint`: the endpoint, "Failed to generate
        // endpoint" with status 400, or "" for other failures.
        let endpoint = endpoint.unwrap_or_else(|| {
            if status == 400 {
                "Failed to generate endpoint".to_owned()
            } else {
                String::new()
            }
        });
        let reply = json!({
            "messageType": "register",
            "channelID": channel_id,
            "status": status,
            "pushEndpoint": endpoint,
        });
        self.send(ws, reply.to_string()).await
    }

    pub(super) async fn on_unregister(
        &mut self,
        ws: &mut Ws,
        unreg: Unregister,
    ) -> Result<(), End> {
        let uaid = self.uaid.clone().ok_or_else(|| sm_error("no uaid"))?;
        let channel_id = unreg.channel_id.0;
        let code = code(unreg.code, 200);
        // Stored messages stay, and notifications in flight still want their acks.
        self.shared
            .store()
            .delete_channel(&uaid, &channel_id)
            .map_err(internal)?;
        lock(&self.shared.stats)
            .unregisters
            .push((channel_id.clone(), code));
        tracing::debug!(channel = %channel_id, code, "unregistered");

        self.reply_delay().await?;
        if !self.omit_replies() {
            let reply =
                json!({"messageType": "unregister", "channelID": channel_id, "status": 200});
            self.send(ws, reply.to_string()).await?;
        }
        Ok(())
    }

    pub(super) async fn on_ack(&mut self, ws: &mut Ws, ack: Ack) -> Result<(), End> {
        if self.fault(Step::Ack) {
            return Err(End::Drop);
        }
        let uaid = self.uaid.clone().ok_or_else(|| sm_error("no uaid"))?;
        for update in ack.updates {
            {
                let mut stats = lock(&self.shared.stats);
                if stats.acks.len() >= MAX_ACK_RECORDS {
                    stats.acks.drain(..MAX_ACK_RECORDS / 10);
                }
                stats.acks.push((
                    update.channel_id.0.clone(),
                    truncate(&update.version),
                    code(update.code, 0),
                ));
            }
            // As autopush: only what was sent on this connection counts. A stored
            // message without a topic stays stored until its whole batch is acked.
            if self.in_flight.remove(&update.version).is_some() {
                if self.recently_acked.len() >= RECENTLY_ACKED {
                    self.recently_acked.pop_front();
                }
                self.recently_acked.push_back(update.version.clone());
                match self.batch.get(&update.version) {
                    Some(false) => self.batch_acked.push(update.version),
                    Some(true) | None => {
                        self.shared
                            .store()
                            .delete_message(&uaid, &update.version)
                            .map_err(internal)?;
                    }
                }
            }
        }
        self.after_acks(ws).await
    }

    pub(super) async fn on_ping(&mut self, ws: &mut Ws) -> Result<(), End> {
        lock(&self.shared.stats).pings += 1;
        let now = Instant::now();
        if let Some(last) = self.last_client_ping {
            if now.duration_since(last) < self.shared.opts.client_ping_min_interval {
                return Err(sm_error("excessive ping"));
            }
        }
        self.last_client_ping = Some(now);
        if self
            .shared
            .faults
            .as_ref()
            .is_some_and(|f| f.ignore_pings())
        {
            return Ok(());
        }
        self.send(ws, "{}".to_owned()).await
    }
}
