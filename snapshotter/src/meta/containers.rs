//! Container records, one per namespace and id (`v1\0nsdata\0{namespace}\0containers\0{id}`).

use super::{
    encode, keys, validate_container_id, validate_labels, validate_namespace, ContainerRecord,
    Labels, MetaError, MetaStore, RecordKind, WriteBatch,
};

impl MetaStore {
    /// Stores a new container (creating the namespace if needed, in the same batch); `RecordExists` if the
    /// namespace already has a container with that id.
    pub fn create_container(
        &self,
        namespace: &str,
        record: &ContainerRecord,
    ) -> Result<(), MetaError> {
        validate_namespace(namespace)?;
        validate_container_id(&record.id)?;
        validate_labels(&record.labels)?;
        let _guard = self.lock();
        let key = keys::record(namespace, keys::CONTAINERS, &record.id);
        if self.kv.get(&key)?.is_some() {
            return Err(MetaError::RecordExists {
                kind: RecordKind::Container,
                namespace: namespace.to_owned(),
                name: record.id.clone(),
            });
        }
        let mut batch = WriteBatch::new();
        self.ensure_namespace(&mut batch, namespace)?;
        batch.put(key, encode(RecordKind::Container, record)?);
        self.kv.write(batch)
    }

    /// The container, or `None`.
    pub fn get_container(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Option<ContainerRecord>, MetaError> {
        validate_container_id(id)?;
        self.namespaced_record(namespace, RecordKind::Container, keys::CONTAINERS, id)
    }

    /// Every container of the namespace, sorted by id.
    pub fn list_containers(&self, namespace: &str) -> Result<Vec<ContainerRecord>, MetaError> {
        self.namespaced_records(namespace, RecordKind::Container, keys::CONTAINERS)
    }

    /// Replaces a container's labels and bumps `updated_at`; `NotFound` if absent.
    pub fn set_container_labels(
        &self,
        namespace: &str,
        id: &str,
        labels: Labels,
        now: std::time::SystemTime,
    ) -> Result<ContainerRecord, MetaError> {
        validate_namespace(namespace)?;
        validate_container_id(id)?;
        validate_labels(&labels)?;
        let _guard = self.lock();
        let key = keys::record(namespace, keys::CONTAINERS, id);
        let mut record: ContainerRecord = self
            .read(RecordKind::Container, &key)?
            .ok_or_else(|| container_not_found(namespace, id))?;
        record.labels = labels;
        record.updated_at = now;
        let mut batch = WriteBatch::new();
        batch.put(key, encode(RecordKind::Container, &record)?);
        self.kv.write(batch)?;
        Ok(record)
    }

    /// Deletes a container record; `NotFound` if absent.
    pub fn delete_container(&self, namespace: &str, id: &str) -> Result<(), MetaError> {
        validate_namespace(namespace)?;
        validate_container_id(id)?;
        let _guard = self.lock();
        let key = keys::record(namespace, keys::CONTAINERS, id);
        if self.kv.get(&key)?.is_none() {
            return Err(container_not_found(namespace, id));
        }
        let mut batch = WriteBatch::new();
        batch.delete(key);
        self.kv.write(batch)
    }
}

fn container_not_found(namespace: &str, id: &str) -> MetaError {
    MetaError::NotFound {
        kind: RecordKind::Container,
        namespace: namespace.to_owned(),
        name: id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn container(id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.to_owned(),
            image: "127.0.0.1:5000/app:1".to_owned(),
            snapshot_key: format!("skiff/default/{id}"),
            runtime: "runc".to_owned(),
            spec: serde_json::json!({"ociVersion": "1.0.2", "process": {"args": ["/bin/sh"]}}),
            labels: Labels::new(),
            created_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            updated_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
        }
    }

    fn stores() -> Vec<(MetaStore, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let rocks = MetaStore::open_rocks(&dir.path().join("meta")).unwrap();
        vec![(MetaStore::in_memory(), None), (rocks, Some(dir))]
    }

    #[test]
    fn container_labels_follow_containerds_limit() {
        let store = MetaStore::in_memory();
        let mut big = container("big");
        big.labels = [("k".to_owned(), "v".repeat(3 << 20))].into();
        let err = store.create_container("a", &big).unwrap_err();
        assert!(matches!(err, MetaError::InvalidLabel { .. }), "{err}");
        store.create_container("a", &container("small")).unwrap();
        let err = store
            .set_container_labels(
                "a",
                "small",
                [("k".to_owned(), "v".repeat(4096))].into(),
                SystemTime::UNIX_EPOCH,
            )
            .unwrap_err();
        assert!(matches!(err, MetaError::InvalidLabel { .. }), "{err}");
        assert!(store.get_container("a", "big").unwrap().is_none());
    }

    #[test]
    fn lifecycle_and_namespace_isolation() {
        for (store, _dir) in stores() {
            store.create_container("a", &container("web")).unwrap();
            assert!(matches!(
                store.create_container("a", &container("web")),
                Err(MetaError::RecordExists { .. })
            ));
            // Another namespace has its own ids.
            store.create_container("b", &container("web")).unwrap();
            assert_eq!(store.list_containers("a").unwrap(), [container("web")]);
            assert_eq!(store.get_container("c", "web").unwrap(), None);

            let later = SystemTime::UNIX_EPOCH + Duration::from_secs(9);
            let labels: Labels = [("k".to_owned(), "v".to_owned())].into();
            let updated = store
                .set_container_labels("a", "web", labels.clone(), later)
                .unwrap();
            assert_eq!((updated.labels, updated.updated_at), (labels, later));
            assert_eq!(updated.created_at, container("web").created_at);

            // A namespace holding a container is not empty.
            assert!(matches!(
                store.remove_namespace("a"),
                Err(MetaError::NamespaceNotEmpty { what, .. }) if what == "containers"
            ));
            store.delete_container("a", "web").unwrap();
            assert!(store
                .delete_container("a", "web")
                .unwrap_err()
                .is_not_found());
            assert!(store
                .set_container_labels("a", "web", Labels::new(), later)
                .unwrap_err()
                .is_not_found());
            store.remove_namespace("a").unwrap();
            assert_eq!(store.list_containers("b").unwrap().len(), 1);
        }
    }

    #[test]
    fn bad_ids_are_refused() {
        let store = MetaStore::in_memory();
        for id in ["", "../x", "a/b"] {
            assert!(matches!(
                store.create_container("a", &container(id)),
                Err(MetaError::InvalidContainerId { .. })
            ));
        }
        assert!(store.list_namespaces().unwrap().is_empty());
    }
}
