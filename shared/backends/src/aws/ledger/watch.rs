//! UnionPay's status queries owed (`WATCH#{id}` items and the
//! `watches_due` index).

use super::*;

pub(super) fn watch_from(item: &HashMap<String, AttributeValue>) -> Result<Watch, LedgerError> {
    get_s(item, "watch_json")
        .and_then(|j| serde_json::from_str(j).ok())
        .ok_or_else(|| unavailable(format!("stored watch {:?} is invalid", get_s(item, "pk"))))
}

#[async_trait]
impl WatchStore for DynamoLedger {
    async fn put_watch(&self, watch: &Watch) -> Result<ApplyOutcome, LedgerError> {
        let mut item = HashMap::from([
            ("pk".to_owned(), s(format!("{WATCH}#{}", watch.id))),
            ("sk".to_owned(), s(WATCH)),
            ("version".to_owned(), n(watch.version)),
            (
                "watch_json".to_owned(),
                s(built(serde_json::to_string(watch))?),
            ),
        ]);
        if let Some(due) = watch.due_at {
            item.insert("gsi_due".to_owned(), s(WATCHES_PARTITION));
            item.insert("due_at".to_owned(), n(unix_ms(due)));
        }
        let (condition, values) = Self::state_condition(watch.version.saturating_sub(1));
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_values(values)
            .send()
            .await;
        match put {
            Ok(_) => Ok(ApplyOutcome::Applied),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(ApplyOutcome::VersionConflict)
            }
            Err(e) => Err(unavailable(cause(e))),
        }
    }
    async fn get_watch(&self, id: &str) -> Result<Option<Watch>, LedgerError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("{WATCH}#{id}")))
            .key("sk", s(WATCH))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(cause(e)))?;
        out.item.as_ref().map(watch_from).transpose()
    }
    async fn due_watches(
        &self,
        t: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Watch>, LedgerError> {
        self.index_items(
            WATCHES_INDEX,
            "gsi_due = :g AND due_at <= :t",
            &[(":g", s(WATCHES_PARTITION)), (":t", n(unix_ms(t)))],
            limit,
        )
        .await?
        .iter()
        .map(watch_from)
        .collect()
    }
}
