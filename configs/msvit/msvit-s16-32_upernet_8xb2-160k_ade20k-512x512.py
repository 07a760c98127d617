# MSViT-S/16-32 + UPerNet on ADE20K, 512x512, 160k iterations, 8 GPUs x 2 images:
# mmseg's DeiT-S UPerNet recipe (vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512) with the
# mixed-scale backbone and the GBaS gate loss (fine fraction annealed 1.0 -> 0.5 over 8k iters).
_base_ = [
    '../_base_/models/upernet_msvit-s.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_160k_adamw.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        # a local timm/DeiT checkpoint (weights cannot be downloaded by this project), e.g.
        # torch.save(timm.create_model('deit_small_patch16_224', pretrained=True).state_dict(),
        #            'pretrain/deit_small_patch16_224.pth')
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/deit_small_patch16_224.pth')),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150))
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
