from .msvit_image_classifier import MSViTImageClassifier

__all__ = ['MSViTImageClassifier']
