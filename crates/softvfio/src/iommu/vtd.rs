//! The engine's IOMMU traits over the soft-iommu VT-d model (placeholder: being written).
